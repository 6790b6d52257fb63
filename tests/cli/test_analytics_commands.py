"""``otel-audit query``, ``report``, ``export`` and ``trace`` end to end."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from otel_audit import AuditTrail
from otel_audit.analytics import list_reports
from otel_audit.cli import app

runner = CliRunner()
DAY = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
TRACE = "12" * 16


@pytest.fixture
def filled_url(store_url: str) -> str:
    """A store with 10 records over 5 days; the last three share one trace."""
    trail = AuditTrail(store_url, auto_migrate=True)
    for i in range(10):
        trail.record("DELETE" if i % 4 == 0 else "UPDATE", user_id=f"user{i % 2}",
                     resource_type="tool", resource_id=f"t-{i}",
                     timestamp=DAY + dt.timedelta(days=i // 2, minutes=i),
                     old_values={"v": i}, trace_id=TRACE if i >= 7 else None,
                     success=i != 8, error_message="denied" if i == 8 else None)
    trail.shutdown()
    return store_url


def test_query_outputs_csv_and_json(filled_url: str) -> None:
    result = runner.invoke(app, ["query", "SELECT user_id, count(*) AS n FROM audit_trails "
                                 "GROUP BY user_id ORDER BY user_id", "--db", filled_url])
    assert result.exit_code == 0, result.output
    assert list(csv.reader(io.StringIO(result.stdout))) == [
        ["user_id", "n"], ["user0", "5"], ["user1", "5"]]
    as_json = runner.invoke(app, ["query", "SELECT id, old_values FROM audit_trails "
                                  "ORDER BY timestamp LIMIT 2", "--db", filled_url,
                                  "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert [row["old_values"] for row in json.loads(as_json.stdout)] == [{"v": 0}, {"v": 1}]


def test_query_refuses_writes_with_a_clear_message(filled_url: str) -> None:
    result = runner.invoke(app, ["query", "DELETE FROM audit_trails", "--db", filled_url])
    assert result.exit_code == 2
    assert "read-only" in result.output and "DELETE" in result.output
    count = runner.invoke(app, ["query", "SELECT count(*) AS n FROM audit_trails",
                                "--db", filled_url])
    assert count.stdout.splitlines() == ["n", "10"]


def test_report_list_names_every_report() -> None:
    result = runner.invoke(app, ["report", "--list"])
    assert result.exit_code == 0, result.output
    listed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["name"] for row in listed] == [r.name for r in list_reports()]
    assert all(row["controls"] and row["description"] for row in listed)


def test_report_with_params_and_outputs(filled_url: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "resource_history", "--db", filled_url,
                                 "-p", "resource_type=tool", "--param", "resource_id=t-4",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["action"], r["old_values"]) for r in rows] == [("DELETE", {"v": 4})]
    out = tmp_path / "deletions.parquet"
    parquet = runner.invoke(app, ["report", "deletions_by_actor", "--db", filled_url,
                                  "--format", "parquet", "--out", str(out)])
    assert parquet.exit_code == 0, parquet.output
    assert duckdb.sql(f"SELECT user_id, deletions FROM '{out}' ORDER BY 1").fetchall() == [
        ("user0", 3)]
    missing = runner.invoke(app, ["report", "resource_history", "--db", filled_url])
    assert missing.exit_code == 2 and "resource_type" in missing.output


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_a_time_range(filled_url: str, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"export.{fmt}"
    result = runner.invoke(app, ["export", "--db", filled_url, "--since", "2026-06-02",
                                 "--until", "2026-06-04T00:00:00+00:00", "--format", fmt,
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported 4 records" in result.output
    reader = {"parquet": "read_parquet", "csv": "read_csv", "jsonl": "read_json"}[fmt]
    rows = duckdb.sql(f"SELECT resource_id FROM {reader}('{out}') ORDER BY 1").fetchall()
    assert rows == [("t-2",), ("t-3",), ("t-4",), ("t-5",)]


def test_trace_shows_a_timeline_with_its_link(filled_url: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_TRACE_URL", "http://jaeger.example/trace/{trace_id}")
    result = runner.invoke(app, ["trace", TRACE, "--db", filled_url, "--format", "table"])
    assert result.exit_code == 0, result.output
    assert "3 audit record(s)" in result.output
    assert f"http://jaeger.example/trace/{TRACE}" in result.output
    assert "denied" in result.output  # the failed step shows its error
    as_csv = runner.invoke(app, ["trace", TRACE, "--db", filled_url])
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["resource_id"] for r in rows] == ["t-7", "t-8", "t-9"]


def test_csv_output_carries_trace_links(filled_url: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_TRACE_URL", "http://tempo.example/{trace_id}")
    result = runner.invoke(app, ["query", "SELECT id, trace_id FROM audit_trails "
                                 "WHERE trace_id IS NOT NULL", "--db", filled_url])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["trace_link"] for r in rows] == [f"http://tempo.example/{TRACE}"] * 3
