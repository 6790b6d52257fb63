"""What a new user meets: one-line errors, stores never created by reads, whole names.

Every CLI error is ``error: <message>`` on stderr with exit status 2 (``verify``: 1 only
for findings); ``--debug`` shows the traceback. Tables keep names whole at 80 columns.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from otel_audit import AuditTrail
from otel_audit.analytics import list_reports
from otel_audit.cli import app

runner = CliRunner()
DAY = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
TRACE = "ab" * 16

#: every command that reads a store, with the arguments it needs besides --db
READ_COMMANDS = [
    ["verify"], ["checkpoint"], ["hold", "list"], ["hold", "add", "--user", "u"],
    ["hold", "release", "1"], ["forget", "--user", "u"],
    ["prune", "--before", "2026-01-01", "--archive", "ARCHIVE"],
    ["query", "SELECT 1"], ["report", "deletions_by_actor"],
    ["export", "--out", "OUT"], ["trace", TRACE],
]


@pytest.fixture
def filled(sqlite_url: str) -> str:
    """Six records, two of them exports, the last three in one trace."""
    trail = AuditTrail(sqlite_url, auto_migrate=True)
    for i in range(6):
        trail.record("EXPORT" if i in (1, 4) else "UPDATE", user_id=f"user{i % 2}",
                     resource_type="tool", resource_id=f"t-{i}",
                     context={"rows": 1000 * i + 7}, timestamp=DAY + dt.timedelta(hours=i),
                     trace_id=TRACE if i >= 3 else None)
    trail.shutdown()
    return sqlite_url


def _args(command: list[str], tmp_path: Path) -> list[str]:
    swap = {"ARCHIVE": str(tmp_path / "archive"), "OUT": str(tmp_path / "out.parquet")}
    return [swap.get(arg, arg) for arg in command]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_read_commands_never_create_a_missing_store(command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "audti.db"
    result = runner.invoke(app, [*_args(command, tmp_path), "--db", f"sqlite:///{missing}"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: no audit store at {missing}: the file does not exist (read commands never "
        "create one; `otel-audit demo` or `otel-audit migrate --db URL` creates one)"]
    assert not missing.exists() and not missing.parent.exists()


@pytest.mark.parametrize("command", [["verify"], ["query", "SELECT 1"], ["trace", TRACE]],
                         ids=lambda c: c[0])
def test_a_database_without_the_trail_is_one_line(command: list[str], tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    import sqlite3

    con = sqlite3.connect(other)
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.close()
    result = runner.invoke(app, [*command, "--db", f"sqlite:///{other}"])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "holds no audit trail (no audit_trails table" in result.stderr
    assert not Path(f"{other}-wal").exists()  # opened read-only: not switched to WAL


@pytest.mark.parametrize("sql", [
    "SELECT * FROM audit_trails WHERE timestamp > 'yesterday'",
    "SELECT CAST(user_id AS INTEGER) FROM audit_trails",
    "SELECT * FROM postgres_query('live', 'SELECT 1')",
    "SELECT nonsense FROM audit_trails",
])
def test_bad_queries_are_one_line_with_exit_2(filled: str, sql: str) -> None:
    result = runner.invoke(app, ["query", sql, "--db", filled])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(filled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sql = "SELECT CAST(user_id AS INTEGER) FROM audit_trails"
    result = runner.invoke(app, ["--debug", "query", sql, "--db", filled])
    assert result.exit_code == 1 and result.exception is not None
    assert "user0" in str(result.exception)  # the original DuckDB error, not an exit
    monkeypatch.setenv("OTEL_AUDIT_DEBUG", "1")
    again = runner.invoke(app, ["query", sql, "--db", filled])
    assert again.exception is not None and not isinstance(again.exception, SystemExit)


def test_report_errors_and_bad_formats_are_one_line(filled: str) -> None:
    for args in (["report", "no_such_report"], ["report", "failure_spikes", "-p", "x=1"],
                 ["report", "failure_spikes", "-p", "min_failures=many"],
                 ["query", "SELECT 1", "--format", "yaml"],
                 ["query", "DELETE FROM audit_trails"]):
        result = runner.invoke(app, [*args, "--db", filled])
        assert result.exit_code == 2, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_export_outlier_threshold_is_rounded(filled: str) -> None:
    result = runner.invoke(app, ["report", "bulk_export_outliers", "--db", filled,
                                 "-p", "percentile=0.123", "-f", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["rows_exported"] for r in rows] == [4007]
    assert rows[0]["threshold"] == round(1007 + 0.123 * 3000, 2)  # not 1375.9999999999998


def test_trace_rejects_an_id_that_is_not_hex(filled: str) -> None:
    for bad in ("nothex", "12" * 15, "0" * 32, "zz" * 16):
        result = runner.invoke(app, ["trace", bad, "--db", filled])
        assert result.exit_code == 2, result.output
        assert "not a W3C trace ID" in result.stderr


def test_trace_keeps_its_link_in_csv_and_json(filled: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_TRACE_URL", "http://tempo.example/{trace_id}")
    as_json = runner.invoke(app, ["trace", TRACE.upper(), "--db", filled, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert [r["resource_id"] for r in rows] == ["t-3", "t-4", "t-5"]
    assert {r["trace_link"] for r in rows} == {f"http://tempo.example/{TRACE}"}
    piped = runner.invoke(app, ["trace", TRACE, "--db", filled])
    assert [r["trace_link"] for r in csv.DictReader(io.StringIO(piped.stdout))] == [
        f"http://tempo.example/{TRACE}"] * 3


def test_export_refuses_an_empty_range(filled: str, tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    result = runner.invoke(app, ["export", "--db", filled, "--out", str(out), "--format", "csv",
                                 "--since", "2026-06-03", "--until", "2026-06-01"])
    assert result.exit_code == 2
    assert "is not before --until" in result.stderr
    assert not out.exists()
    bad = runner.invoke(app, ["export", "--db", filled, "--out", str(out), "--since", "soon"])
    assert bad.exit_code == 2 and "--since: not an ISO date/time" in bad.stderr


def test_export_reports_the_records_it_wrote(filled: str, tmp_path: Path) -> None:
    out = tmp_path / "all.csv"
    result = runner.invoke(app, ["export", "--db", filled, "--out", str(out), "-f", "csv"])
    assert result.exit_code == 0, result.output
    assert "exported 6 records" in result.stderr
    assert "0%" not in result.stderr  # no progress bar stuck at 0%
    assert len(out.read_text().splitlines()) == 7


def test_an_unwritable_output_file_is_one_line(filled: str, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "r.csv"
    result = runner.invoke(app, ["report", "deletions_by_actor", "--db", filled,
                                 "--out", str(target)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: No such file or directory: {target}"


# ------------------------------------------------------------------ tables


def test_report_list_keeps_names_whole_at_80_columns() -> None:
    result = runner.invoke(app, ["report", "--list", "--format", "table"],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    words = set(result.stdout.split())
    assert {r.name for r in list_reports()} <= words
    assert "min_failures" in words and "INTEGER" in words  # parameters with types...
    assert "0.99" in words  # ...and their defaults


def test_report_list_as_csv_and_json_carries_types_and_defaults() -> None:
    listed = list(csv.DictReader(io.StringIO(runner.invoke(app, ["report", "--list"]).stdout)))
    spikes = next(row for row in listed if row["name"] == "failure_spikes")
    assert "min_failures INTEGER = 3" in spikes["parameters"]
    history = json.loads(runner.invoke(app, ["report", "--list", "-f", "json"]).stdout)
    by_name = {row["name"]: row for row in history}
    assert "resource_type VARCHAR (required)" in by_name["resource_history"]["parameters"]


def test_report_name_help_shows_its_parameters() -> None:
    result = runner.invoke(app, ["report", "bulk_export_outliers", "--help"],
                           env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "report bulk_export_outliers" in result.stdout
    assert "percentile=..." in result.stdout and "DOUBLE" in result.stdout
    assert "0.99" in result.stdout
    assert "--param" in result.stdout  # followed by the command's own options
    generic = runner.invoke(app, ["report", "--help"])
    assert generic.exit_code == 0 and "--list" in generic.stdout


def test_demo_summary_keeps_names_whole_at_80_columns(sqlite_url: str) -> None:
    result = runner.invoke(app, ["demo", "--db", sqlite_url, "-n", "300", "-f", "table"],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if not line.startswith("wrote ")]
    assert max(len(line) for line in lines) <= 80  # (the sentence naming the file may not)
    words = set(result.stdout.split())
    assert {"CREATE", "UPDATE", "READ", "failure", "success"} <= words
    trail = AuditTrail(sqlite_url)
    latest = trail.records(limit=1)[0]
    trail.shutdown()
    assert latest.trace_id in words  # a trace ID is never folded over two lines


def test_demo_when_piped_prints_csv_and_says_when_it_adds(sqlite_url: str) -> None:
    first = runner.invoke(app, ["demo", "--db", sqlite_url, "-n", "200"])
    assert first.exit_code == 0, first.output
    tables = first.stdout.strip().split("\n\n")
    assert len(tables) == 2
    by_action = list(csv.DictReader(io.StringIO(tables[0])))
    assert sum(int(r["records"]) for r in by_action) >= 200
    assert "already holds" not in first.stderr
    second = runner.invoke(app, ["demo", "--db", sqlite_url, "-n", "200"])
    assert "already holds" in second.stderr and "--fresh" in second.stderr
    fresh = runner.invoke(app, ["demo", "--db", sqlite_url, "-n", "200", "--fresh",
                                "-f", "json"])
    assert fresh.exit_code == 0, fresh.output
    assert "already holds" not in fresh.stderr
    trail = AuditTrail(sqlite_url)
    count = len(trail.records(limit=10_000))
    trail.shutdown()
    assert 200 <= count < 400


def test_config_and_hold_list_print_csv_when_piped(filled: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_BATCH_SIZE", "77")
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["config"]).stdout)))
    assert {"setting": "batch_size", "value": "77", "from": "OTEL_AUDIT_BATCH_SIZE"} in rows
    added = runner.invoke(app, ["hold", "add", "--db", filled, "--user", "user1",
                                "--reason", "case 7", "--by", "legal"])
    assert added.exit_code == 0, added.output
    holds = list(csv.DictReader(io.StringIO(
        runner.invoke(app, ["hold", "list", "--db", filled]).stdout)))
    assert [(h["kind"], h["value"], h["reason"], h["by"]) for h in holds] == [
        ("user", "user1", "case 7", "legal")]


def test_query_table_is_never_wider_than_the_terminal(filled: str) -> None:
    result = runner.invoke(app, ["query", "SELECT * FROM audit_trails", "--db", filled,
                                 "-f", "table"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    trail = AuditTrail(filled)
    ids = {r.id for r in trail.records(limit=10)}
    trail.shutdown()
    assert ids <= set(result.stdout.split())  # record IDs whole, never folded


def test_help_shows_the_environment_and_defaults_of_options() -> None:
    result = runner.invoke(app, ["query", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "[env: OTEL_AUDIT_DATABASE_URL; default: sqlite:///audit.db]" in result.stdout
    assert "[default: table on a terminal, csv when piped]" in result.stdout


def test_booleans_read_yes_and_no_in_tables_and_stay_true_false_in_csv(filled: str) -> None:
    sql = "SELECT resource_id, success FROM audit_trails ORDER BY resource_id LIMIT 1"
    table = runner.invoke(app, ["query", sql, "--db", filled, "-f", "table"])
    assert "t-0" in table.stdout and "yes" in table.stdout.split()
    piped = runner.invoke(app, ["query", sql, "--db", filled])
    assert piped.stdout.splitlines() == ["resource_id,success", "t-0,True"]


@pytest.mark.postgres
def test_postgres_store_errors_are_one_line(pg_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from otel_audit.store.writer import create_store_engine

    missing_db = make_url(pg_url).set(database="otel_audit_no_such_database")
    gone = runner.invoke(app, ["query", "SELECT 1", "--db",
                               missing_db.render_as_string(hide_password=False)])
    assert gone.exit_code == 2
    assert len(gone.stderr.strip().splitlines()) == 1
    assert "cannot open the store" in gone.stderr and "otel_audit_no_such_database" in gone.stderr
    # a database reachable but without the trail: a fresh schema of the session's database
    engine = create_store_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS no_trail CASCADE"))
        conn.execute(text("CREATE SCHEMA no_trail"))
    engine.dispose()
    url = make_url(pg_url).update_query_dict({"options": "-csearch_path=no_trail"})
    empty = runner.invoke(app, ["verify", "--db", url.render_as_string(hide_password=False)])
    assert empty.exit_code == 2, empty.output
    assert "holds no audit trail (no audit_trails table" in empty.stderr


def test_lists_are_json_in_csv_and_numbers_align_right_in_tables(filled: str) -> None:
    sql = ("SELECT user_id, count(*) AS n, list(resource_id ORDER BY resource_id) AS ids, "
           "max(timestamp) AS last FROM audit_trails GROUP BY user_id ORDER BY user_id")
    piped = runner.invoke(app, ["query", sql, "--db", filled])
    rows = list(csv.DictReader(io.StringIO(piped.stdout)))
    assert json.loads(rows[0]["ids"]) == ["t-0", "t-2", "t-4"]
    assert rows[0]["last"] == "2026-06-01T16:00:00+00:00"  # CSV keeps full ISO 8601
    table = runner.invoke(app, ["query", sql, "--db", filled, "-f", "table"],
                          env={"COLUMNS": "120"})
    assert "2026-06-01 16:00:00" in table.stdout  # UTC to the second for a person
    sizes = ("SELECT resource_id, CAST(json_extract_string(context, '$.rows') AS INTEGER) "
             "AS n FROM audit_trails ORDER BY resource_id")
    aligned = runner.invoke(app, ["query", sizes, "--db", filled, "-f", "table"])
    ends = {line.rstrip().rindex(n) + len(n)
            for line in aligned.stdout.splitlines() if line.lstrip().startswith("t-")
            for n in [line.split()[-1]]}
    assert len(ends) == 1  # 7 and 5007 end in the same column


def test_verify_findings_are_csv_when_piped_and_exit_1(filled: str) -> None:
    import sqlite3

    path = filled.removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    con.execute("UPDATE audit_trails SET user_id = 'mallory' WHERE resource_id = 't-2'")
    con.commit()
    con.close()
    result = runner.invoke(app, ["verify", "--db", filled])
    assert result.exit_code == 1, result.output  # 1: findings, not an error
    table = "".join(line for line in result.stdout.splitlines(keepends=True)
                    if not line.startswith("FAILED"))  # the summary line follows the CSV
    findings = list(csv.DictReader(io.StringIO(table)))
    assert findings and {f["kind"] for f in findings} >= {"modified"}
    assert findings[0]["stream"] and findings[0]["record"]  # whole IDs, not a Rich box
