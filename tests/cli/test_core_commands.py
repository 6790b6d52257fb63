"""``otel-audit demo`` and ``otel-audit migrate`` end to end."""

from __future__ import annotations

from collections import Counter

import pytest
from typer.testing import CliRunner

from otel_audit import AuditTrail
from otel_audit.cli import app
from otel_audit.store.migrate import current_revision, head_revision
from otel_audit.store.writer import create_store_engine

runner = CliRunner()


def test_migrate_creates_then_reports_head(sqlite_url: str) -> None:
    first = runner.invoke(app, ["migrate", "--db", sqlite_url])
    assert first.exit_code == 0, first.output
    assert "upgraded empty ->" in first.output
    again = runner.invoke(app, ["migrate", "--db", sqlite_url])
    assert again.exit_code == 0 and "already at" in again.output
    assert current_revision(create_store_engine(sqlite_url)) == head_revision()


def test_migrate_bad_url_is_a_clear_error() -> None:
    result = runner.invoke(app, ["migrate", "--db", "nonsense://"])
    assert result.exit_code == 2
    assert "error" in result.output.lower()


def test_demo_writes_a_realistic_trail(store_url: str) -> None:
    result = runner.invoke(app, ["demo", "--db", store_url, "--records", "1500",
                                 "--format", "table"])
    assert result.exit_code == 0, result.output
    assert "records by action and outcome" in result.output
    trail = AuditTrail(store_url)
    rows = trail.records(limit=5000)
    trail.shutdown()
    assert len(rows) >= 1500
    assert all(r.trace_id and r.correlation_id == r.trace_id for r in rows)
    actions = Counter(r.action for r in rows)
    assert {"CREATE", "READ", "UPDATE", "DELETE", "LOGIN", "EXPORT", "EXECUTE"} <= set(actions)
    assert any(not r.success for r in rows)
    assert any(r.data_classification == "confidential" for r in rows)
    assert any(r.acting_as for r in rows)
    assert len({r.team_id for r in rows}) >= 4
    assert any(r.timestamp.hour < 6 or r.timestamp.hour >= 20 for r in rows)
    updates = [r for r in rows if r.action == "UPDATE"]
    assert all(r.old_values and r.new_values for r in updates)
    # causal: a resource is created before anything else happens to it, and nothing
    # happens to it once it is deleted
    state: dict[tuple[str | None, str | None], str] = {}
    for r in sorted(rows, key=lambda r: (r.timestamp, r.id)):
        if r.resource_type not in {"tool", "server", "prompt", "gateway"}:
            continue
        key = (r.resource_type, r.resource_id)
        if r.action == "CREATE":
            assert key not in state, f"{key} created twice"
            if r.success:
                state[key] = "live"
        else:
            assert state.get(key) == "live", f"{r.action} of {key} while {state.get(key)}"
            if r.action == "DELETE" and r.success:
                state[key] = "deleted"


def test_config_shows_effective_values_and_hides_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    mp = monkeypatch
    mp.setenv("OTEL_AUDIT_BATCH_SIZE", "77")
    mp.setenv("OTEL_AUDIT_HMAC_KEY", "very-secret-value")
    mp.setenv("OTEL_AUDIT_DATABASE_URL", "postgresql://auditor:pw@db.internal/audit")
    result = runner.invoke(app, ["config", "--format", "table"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "77" in result.output and "OTEL_AUDIT_BATCH_SIZE" in result.output
    assert "very-secret-value" not in result.output and "(set)" in result.output
    assert "pw@" not in result.output
    markdown = runner.invoke(app, ["config", "--markdown"])
    from otel_audit.config import settings_table

    assert markdown.output.strip() == settings_table().strip()


def test_config_reports_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_MODE", "eventually")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "mode must be one of" in result.output
