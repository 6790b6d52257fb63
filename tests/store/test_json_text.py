"""JSON columns on SQLite are TEXT: documents are stored exactly as written, read as JSON."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from otel_audit import AuditTrail
from otel_audit.store.migrate import current_revision, head_revision, upgrade
from otel_audit.store.reader import query_records
from otel_audit.store.writer import create_store_engine

_JSON_COLUMNS = ("old_values", "new_values", "changes", "context")


@pytest.fixture
def sqlite_trail(sqlite_url: str) -> Iterator[AuditTrail]:
    """A sync trail on a fresh SQLite file."""
    trail = AuditTrail(sqlite_url, auto_migrate=True, mode="sync")
    yield trail
    trail.shutdown(5)


def test_new_sqlite_store_declares_json_columns_text(sqlite_trail: AuditTrail,
                                                     sqlite_url: str) -> None:
    trail = sqlite_trail
    trail.record("UPDATE", user_id="u", new_values=12, old_values=1.5, changes=-0.0,  # type: ignore[arg-type]
                 context={"n": 10**40})
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        types = {name: kind for _, name, kind, *_ in conn.execute(
            "PRAGMA table_info(audit_trails)")}
        stored = conn.execute(
            "SELECT typeof(new_values), new_values, typeof(old_values), old_values, "
            "changes, context FROM audit_trails").fetchone()
    assert {types[name] for name in _JSON_COLUMNS} == {"TEXT"}
    assert stored[0] == "text" and stored[1] == "12"
    assert stored[2] == "text" and stored[3] == "1.5"
    assert stored[4] == "0.0"  # negative zero in canonical form (docs/integrity.md)
    assert stored[5] == '{"n":' + str(10**40) + "}"  # exact, never a double
    record = trail.records()[0]  # read back as JSON values, exactly
    assert record.new_values == 12 and record.old_values == 1.5
    assert record.context == {"n": 10**40}


def _old_store(path: Path) -> None:
    """A store at revision 0002 whose NUMERIC-affinity columns converted bare numbers."""
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine, "0002")
    engine.dispose()
    with sqlite3.connect(path) as conn:
        rows = [("a", "12", '{"a":1}'), ("b", "1.2345678901234567", "2"),
                ("c", "1e+20", None), ("d", '"7"', '[1,2.5]'), ("e", None, "0.0")]
        conn.executemany(
            "INSERT INTO audit_trails (id, timestamp, action, user_id, requires_review, "
            "success, schema_version, new_values, context) VALUES "
            "(?, '2026-01-01 00:00:00.000000', 'READ', 'u', 0, 1, 1, ?, ?)", rows)
        kinds = dict(conn.execute("SELECT id, typeof(new_values) FROM audit_trails"))
    assert kinds["a"] == "integer" and kinds["b"] == "real"  # what the old schema did


def test_migration_rebuilds_sqlite_table_with_text_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_store(path)
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with sqlite3.connect(path) as conn:
        types = {name: kind for _, name, kind, *_ in conn.execute(
            "PRAGMA table_info(audit_trails)")}
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT id, new_values, typeof(new_values), context FROM audit_trails")}
        indexes = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND "
            "tbl_name = 'audit_trails' AND sql IS NOT NULL")}
    assert {types[name] for name in _JSON_COLUMNS} == {"TEXT"}
    assert rows["a"] == ("12", "text", '{"a":1}')
    assert rows["b"] == ("1.2345678901234567", "text", "2")  # REAL back in exact text
    assert rows["c"] == ("1e+20", "text", None)
    assert rows["d"] == ('"7"', "text", "[1,2.5]")
    assert rows["e"] == (None, "null", "0")
    assert indexes == {"ix_audit_trails_timestamp", "ix_audit_trails_resource",
                       "ix_audit_trails_user", "ix_audit_trails_trace",
                       "ux_audit_trails_stream_seq",
                       # 0006: the console's action and review-queue indexes
                       "ix_audit_trails_action", "ix_audit_trails_review"}
    records = {r.id: r for r in query_records(engine)}
    assert records["a"].new_values == 12 and records["b"].new_values == 1.2345678901234567
    assert records["d"].new_values == "7" and records["d"].context == [1, 2.5]
    upgrade(engine)  # idempotent
    engine.dispose()


def test_duckdb_reads_text_columns_as_json(sqlite_trail: AuditTrail, sqlite_url: str) -> None:
    from otel_audit.analytics import AuditAnalytics

    trail = sqlite_trail
    trail.record("UPDATE", user_id="u", new_values={"rows": 12, "big": 10**17})
    trail.shutdown(5)
    with AuditAnalytics(sqlite_url) as analytics:
        rows = analytics.sql("SELECT new_values->>'rows', json_type(new_values), "
                             "new_values->>'big' FROM audit_trails").fetchall()
    assert rows == [("12", "OBJECT", str(10**17))]


@pytest.mark.postgres
def test_postgres_keeps_jsonb(pg_url: str) -> None:
    """On PostgreSQL the migration changes nothing: the columns stay JSONB."""
    engine = create_store_engine(pg_url)
    upgrade(engine)
    with engine.connect() as conn:
        kinds = dict(conn.exec_driver_sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'audit_trails'").fetchall())
    engine.dispose()
    assert {kinds[name] for name in _JSON_COLUMNS} == {"jsonb"}
