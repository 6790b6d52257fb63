"""AuditAnalytics: typed view, read-only, live, bound parameters, archives, audited reads."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from otel_audit import AuditTrail
from otel_audit.analytics import AuditAnalytics, trace_link
from otel_audit.errors import ConfigError, QueryRefusedError
from otel_audit.record import AuditRecord
from otel_audit.store.migrate import upgrade
from otel_audit.store.writer import create_store_engine

WHEN = dt.datetime(2026, 5, 4, 22, 30, 15, 123456, tzinfo=dt.UTC)


def _write(trail: AuditTrail, n: int = 3, user: str = "alice") -> list[AuditRecord]:
    for i in range(n):
        trail.record("UPDATE", user_id=user, resource_type="tool", resource_id=f"t-{i}",
                     old_values={"a": i}, new_values={"a": i + 1, "nested": {"ok": True}},
                     success=i != 1, timestamp=WHEN + dt.timedelta(minutes=i),
                     context={"rows": i})
    trail.flush()
    return trail.records(limit=1000)


def test_view_has_the_same_types_on_every_store(make_trail: Callable[..., AuditTrail],
                                                 store_url: str) -> None:
    records = _write(make_trail())
    with AuditAnalytics(store_url) as analytics:
        types = dict(analytics.sql("SELECT column_name, column_type FROM "
                                   "(DESCRIBE audit_trails)").fetchall())
        assert types["timestamp"] == "TIMESTAMP WITH TIME ZONE"
        for name in ("old_values", "new_values", "changes", "context"):
            assert types[name] == "JSON"
        assert types["success"] == types["requires_review"] == "BOOLEAN"
        rows = analytics.sql(
            "SELECT id, timestamp, success, new_values->>'$.nested.ok' AS ok, "
            "CAST(context->'$.rows' AS INTEGER) AS n FROM audit_trails ORDER BY timestamp"
        ).fetchall()
    by_id = {r.id: r for r in records}
    assert [(i, ts, ok_) for i, ts, ok_, _, _ in rows] == [
        (r.id, r.timestamp, r.success) for r in sorted(records, key=lambda r: r.timestamp)]
    assert rows[0][1] == WHEN and rows[0][1].utcoffset() == dt.timedelta(0)
    assert {ok for _, _, _, ok, _ in rows} == {"true"}
    assert [n for *_, n in rows] == [by_id[i].context["rows"] for i, *_ in rows]


@pytest.mark.parametrize("statement", [
    "DELETE FROM audit_trails",
    "UPDATE audit_trails SET user_id = 'x'",
    "INSERT INTO live.audit_trails (id) VALUES ('x')",
    "CREATE TABLE scratch AS SELECT 1",
    "DROP VIEW audit_trails",
    "COPY (SELECT 1) TO 'out.csv'",
    "ATTACH 'other.db' AS other",
    "SELECT 1; DELETE FROM audit_trails",
])
def test_writes_are_refused(make_trail: Callable[..., AuditTrail], store_url: str,
                            statement: str) -> None:
    records = _write(make_trail())
    with AuditAnalytics(store_url) as analytics:
        with pytest.raises(QueryRefusedError):
            analytics.sql(statement)
        assert analytics.sql("SELECT count(*) FROM audit_trails").fetchone() == (len(records),)


def test_the_store_is_attached_read_only(make_trail: Callable[..., AuditTrail],
                                         store_url: str) -> None:
    _write(make_trail())
    with AuditAnalytics(store_url) as analytics:
        attached = analytics.sql("SELECT type, readonly FROM duckdb_databases() "
                                 "WHERE database_name = 'live'").fetchall()
        assert attached == [("sqlite" if store_url.startswith("sqlite") else "postgres", True)]
        if store_url.startswith("sqlite"):
            # DuckDB's SQLite reads the file in a child process: this process's connection
            # holds only the rows that come back, with no store attached
            assert analytics.con.execute("SELECT count(*) FROM duckdb_databases() "
                                         "WHERE NOT internal").fetchone() == (1,)
            with pytest.raises(duckdb.Error, match="does not exist"):
                analytics.con.execute("DELETE FROM live.audit_trails")
        else:
            # even bypassing the statement check, DuckDB refuses to write the attached store
            with pytest.raises(Exception, match="read-only"):
                analytics.con.execute("DELETE FROM live.audit_trails")


def test_reads_are_live(make_trail: Callable[..., AuditTrail], store_url: str) -> None:
    trail = make_trail()
    _write(trail, 2)
    with AuditAnalytics(store_url) as analytics:
        assert analytics.sql("SELECT count(*) FROM audit_trails").fetchone() == (2,)
        _write(trail, 3, user="bob")
        assert analytics.sql("SELECT count(*) FROM audit_trails").fetchone() == (5,)


def test_parameters_are_bound_not_interpolated(make_trail: Callable[..., AuditTrail],
                                               store_url: str) -> None:
    _write(make_trail())
    with AuditAnalytics(store_url) as analytics:
        hostile = "alice' OR '1'='1"
        assert analytics.sql("SELECT count(*) FROM audit_trails WHERE user_id = $u",
                             {"u": hostile}).fetchone() == (0,)
        assert analytics.sql("SELECT count(*) FROM audit_trails WHERE user_id = ?",
                             ["alice"]).fetchone() == (3,)


def test_relation_converts_to_dataframes(make_trail: Callable[..., AuditTrail],
                                         store_url: str) -> None:
    _write(make_trail())
    with AuditAnalytics(store_url) as analytics:
        relation = analytics.sql("SELECT user_id, timestamp, success FROM audit_trails")
        with warnings.catch_warnings():
            # DuckDB's own TIMESTAMPTZ conversion calls DataFrame.drop(inplace=True)
            warnings.simplefilter("error")
            frame = relation.df()
        assert len(frame) == 3
        assert str(frame["timestamp"].dtype).endswith("UTC]")
        assert frame["timestamp"].min() == WHEN
        assert relation.fetchdf().shape == relation.to_df().shape == (3, 3)
        assert relation.arrow().read_all().num_rows == 3
        assert relation.pl().height == 3
        assert len(relation.fetchall()) == 3


def test_parquet_archives_join_the_live_rows(tmp_path: Path,
                                            make_trail: Callable[..., AuditTrail],
                                            store_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    old = AuditTrail(f"sqlite:///{tmp_path}/old.db", auto_migrate=True)
    archived = _write(old, 4, user="carol")
    old.shutdown()
    archive = tmp_path / "archive" / "day=2026-05-04"
    archive.mkdir(parents=True)
    with AuditAnalytics(f"sqlite:///{tmp_path}/old.db") as source:
        source.copy_to("SELECT * FROM audit_trails", None, archive / "part-0.parquet", "parquet")
    live = _write(make_trail(), 2, user="dave")
    with AuditAnalytics(store_url, archive_dir=tmp_path / "archive") as analytics:
        got = dict(analytics.sql("SELECT user_id, count(*) FROM audit_trails "
                                 "GROUP BY user_id").fetchall())
        types = dict(analytics.sql("SELECT column_name, column_type FROM "
                                   "(DESCRIBE audit_trails)").fetchall())
        oldest = analytics.sql("SELECT min(timestamp) FROM audit_trails").fetchone()
    assert got == {"carol": len(archived), "dave": len(live)}
    assert types["timestamp"] == "TIMESTAMP WITH TIME ZONE" and types["context"] == "JSON"
    assert oldest == (WHEN,)
    monkeypatch.setenv("OTEL_AUDIT_ARCHIVE_DIR", str(tmp_path / "archive"))
    with AuditAnalytics(store_url) as from_env:
        assert from_env.sql("SELECT count(*) FROM audit_trails").fetchone() == (6,)


def test_empty_archive_dir_is_just_the_live_store(tmp_path: Path,
                                                  make_trail: Callable[..., AuditTrail],
                                                  store_url: str) -> None:
    _write(make_trail(), 2)
    with AuditAnalytics(store_url, archive_dir=tmp_path / "missing") as analytics:
        assert analytics.sql("SELECT count(*) FROM audit_trails").fetchone() == (2,)


def test_reads_are_audited_only_when_asked(make_trail: Callable[..., AuditTrail],
                                           store_url: str) -> None:
    trail = make_trail()
    _write(trail)
    with AuditAnalytics(trail) as quiet:
        quiet.report("pending_review")
    trail.flush()
    assert trail.records(action="audit.read") == []
    with AuditAnalytics(trail, audit_reads=True, reader="auditor") as audited:
        audited.report("failure_spikes", min_failures=1)
        audited.sql("SELECT count(*) FROM audit_trails")
    trail.flush()
    reads = sorted(trail.records(action="audit.read"), key=lambda r: r.timestamp)
    assert [(r.user_id, r.resource_type, r.resource_id) for r in reads] == [
        ("auditor", "audit_trail", "failure_spikes"), ("auditor", "audit_trail", "query")]
    assert reads[0].context["report"] == "failure_spikes"
    assert reads[0].context["params"]["min_failures"] == 1
    assert reads[1].context["query"] == "SELECT count(*) FROM audit_trails"


def test_audited_reads_open_their_own_trail(sqlite_url: str) -> None:
    trail = AuditTrail(sqlite_url, auto_migrate=True)
    _write(trail)
    with AuditAnalytics(sqlite_url, audit_reads=True, reader="eve") as analytics:
        analytics.report("audit_trail_reads")
    with AuditAnalytics(sqlite_url) as analytics:
        rows = analytics.report("audit_trail_reads").fetchall()
    trail.shutdown()
    assert [(r[1], r[2], r[3]) for r in rows] == [("eve", "audit_trail_reads",
                                                   "audit_trail_reads")]


def test_bad_targets_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no SQLite audit trail"):
        AuditAnalytics(f"sqlite:///{tmp_path}/absent.db")
    with pytest.raises(ConfigError, match="in-memory"):
        AuditAnalytics("sqlite://")
    with pytest.raises(ConfigError, match="SQLite or PostgreSQL"):
        AuditAnalytics("mysql://u@h/db")


def test_trace_link_template(monkeypatch: pytest.MonkeyPatch) -> None:
    assert trace_link("ab" * 16) is None
    assert trace_link("ab" * 16, "http://jaeger/trace/{trace_id}") == \
        "http://jaeger/trace/" + "ab" * 16
    monkeypatch.setenv("OTEL_AUDIT_TRACE_URL", "https://tempo/explore?traceId={trace_id}")
    assert trace_link("cd" * 16) == "https://tempo/explore?traceId=" + "cd" * 16
    assert trace_link(None) is None
    assert json.dumps(trace_link("ef" * 16))  # a plain string


def test_archives_missing_newer_columns_read_as_nulls(tmp_path: Path, sqlite_url: str) -> None:
    engine = create_store_engine(sqlite_url)
    upgrade(engine)  # an empty, migrated store
    engine.dispose()
    archive = tmp_path / "archive"
    archive.mkdir()
    duckdb.sql(
        "SELECT 'a1' AS id, TIMESTAMPTZ '2025-01-01 00:00:00+00' AS timestamp, "
        "'READ' AS action, 'old' AS user_id, TRUE AS success, FALSE AS requires_review, "
        "1 AS schema_version"
    ).write_parquet(str(archive / "old.parquet"))
    with AuditAnalytics(sqlite_url, archive_dir=archive) as analytics:
        row = analytics.sql("SELECT id, user_id, context, acting_as, success "
                            "FROM audit_trails").fetchall()
    assert row == [("a1", "old", None, None, True)]


def test_snapshot_has_the_same_rows_and_refreshes(make_trail: Callable[..., AuditTrail],
                                                   store_url: str) -> None:
    trail = make_trail()
    _write(trail, 3)
    with AuditAnalytics(store_url) as live, AuditAnalytics(store_url, snapshot=True) as snap:
        query = "SELECT id, timestamp, success, context FROM audit_trails ORDER BY id"
        assert snap.sql(query).fetchall() == live.sql(query).fetchall()
        describe = "SELECT column_name, column_type FROM (DESCRIBE audit_trails)"
        assert snap.sql(describe).fetchall() == live.sql(describe).fetchall()
        _write(trail, 2, user="bob")
        assert snap.sql("SELECT count(*) FROM audit_trails").fetchone() == (3,)
        snap.refresh()
        assert snap.sql("SELECT count(*) FROM audit_trails").fetchone() == (5,)
        with pytest.raises(QueryRefusedError, match="read-only"):
            snap.sql("DELETE FROM audit_trails")
