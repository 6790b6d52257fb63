"""Store writers and the store exporters: idempotent replay, the generic path, permanent
errors, schema checks, the COPY text made ahead."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from otel_audit import AuditTrail, StoreError
from otel_audit.exporters.sqlalchemy import SQLAlchemyExporter
from otel_audit.exporters.sqlite import python_sqlite_params as _python_sqlite_params
from otel_audit.exporters.store import content_error
from otel_audit.record import AuditRecord, normalise
from otel_audit.store.reader import query_records
from otel_audit.store.schema import audit_trails
from otel_audit.store.writer import PreparedRecord, StoreWriter


def prepared(n: int, start: int = 0) -> list[PreparedRecord]:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    out = []
    for i in range(start, start + n):
        record = AuditRecord(id=f"{i:032x}", timestamp=base + dt.timedelta(seconds=i),
                             action="READ", user_id="u", resource_id=str(i),
                             new_values={"i": i})
        out.append(PreparedRecord(*normalise(record)))
    return out


def count(writer: StoreWriter) -> int:
    with writer.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(audit_trails)) or 0)


def test_replaying_a_batch_never_duplicates(store_url: str) -> None:
    writer = StoreWriter(store_url, auto_migrate=True)
    batch = prepared(100)
    writer.write(batch)
    writer.write(batch)  # full replay
    writer.write(prepared(50, start=80))  # overlapping replay: 20 old + 30 new
    assert count(writer) == 130
    rows = query_records(writer.engine, limit=1000)
    assert len({r.id for r in rows}) == 130
    assert rows[0].new_values == {"i": 129}
    writer.dispose()


def test_generic_dialect_path_is_idempotent(sqlite_url: str) -> None:
    writer = StoreWriter(sqlite_url, auto_migrate=True)
    writer.ensure_schema()
    batch = prepared(20)
    generic = SQLAlchemyExporter(writer.engine)
    generic.write(batch)
    generic.write(batch + prepared(5, start=20))
    assert count(writer) == 25
    [row] = query_records(writer.engine, resource_id="3")
    assert row.new_values == {"i": 3}
    writer.dispose()


def test_missing_schema_without_auto_migrate_names_the_fix(pg_url: str) -> None:
    writer = StoreWriter(pg_url, auto_migrate=False)
    with writer.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE audit_trails RENAME TO audit_trails_moved")
    try:
        with pytest.raises(StoreError, match="otel-audit migrate"):
            writer.write(prepared(1))
    finally:
        with writer.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE audit_trails_moved RENAME TO audit_trails")
        writer.dispose()


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    trail = AuditTrail(f"sqlite:///{path}", mode="sync")
    trail.record("READ", user_id="u")
    trail.shutdown()
    assert path.stat().st_mode & 0o777 == 0o600


def test_store_rejection_isolates_the_bad_record(pg_url: str) -> None:
    trail = AuditTrail(pg_url, flush_interval=0.01)

    def corrupt(batch: list[PreparedRecord]) -> list[PreparedRecord]:
        # a value PostgreSQL refuses after normalisation (as a buggy sealer could make)
        # (the store row is derived from the record: a sealer that changes one drops it)
        return [p._replace(record=p.record._replace(request_method="X" * 11), row=None)
                if p.record.resource_id == "bad" else p for p in batch]

    trail.pipeline.sealers.append(corrupt)
    for rid in ("ok", "bad", "ok2"):
        trail.record("READ", user_id="u", resource_id=rid)
    assert trail.flush(10)
    assert {r.resource_id for r in trail.records()} == {"ok", "ok2"}
    assert trail.stats().failed == 1
    trail.shutdown()


def test_batches_larger_than_one_statement_commit_as_one(sqlite_url: str) -> None:
    writer = StoreWriter(sqlite_url, auto_migrate=True)
    writer.write(prepared(1500))  # several multi-row statements in one explicit transaction
    assert count(writer) == 1500
    writer.write(prepared(1500))
    assert count(writer) == 1500
    writer.dispose()


@pytest.mark.postgres
def test_timestamps_are_utc_whatever_the_session_time_zone(pg_url: str) -> None:
    # COPY sends UTC text; a server or session in another zone must not shift it
    url = pg_url + ("&" if "?" in pg_url else "?") + "options=-c%20TimeZone%3DAsia%2FTokyo"
    writer = StoreWriter(url, auto_migrate=True)
    batch = prepared(3)
    writer.write(batch)
    with writer.engine.connect() as conn:
        stored = conn.execute(select(audit_trails.c.id, audit_trails.c.timestamp)).all()
    assert {i: ts.astimezone(dt.UTC) for i, ts in stored} == {
        p.record.id: p.record.timestamp for p in batch}
    writer.dispose()


def test_the_kept_connection_is_replaced_after_a_failure(store_url: str) -> None:
    writer = StoreWriter(store_url, auto_migrate=True)
    writer.write(prepared(10))
    first = writer._bulk
    assert first is not None  # kept between batches
    first.connection.driver_connection.close()  # type: ignore[union-attr]  # it dies
    with pytest.raises(StoreError) as failed:
        writer.write(prepared(10, start=10))
    assert failed.value.transient and writer._bulk is None
    writer.write(prepared(10, start=10))  # a new connection, and the retry lands
    assert count(writer) == 20
    writer.dispose()


def test_copy_text_escapes_what_copy_reads_specially(speedups: Any) -> None:
    copy_text = speedups.copy_text
    rows = [("a\tb\nc\\d\re\bf\fg\vh", None, 7, -1, "ключ ✓"), ("", None, 0, 2**40, "x")]
    assert copy_text(rows) == (
        b"a\\tb\\nc\\\\d\\re\\bf\\fg\\vh\t\\N\t7\t-1\t" + "ключ ✓".encode() + b"\n"
        b"\t\\N\t0\t1099511627776\tx\n")
    with pytest.raises(TypeError):
        copy_text([(1.5,)])


@pytest.mark.postgres
def test_encoded_copy_stores_what_row_by_row_copy_stores(pg_url: str, speedups: Any) -> None:
    writer = StoreWriter(pg_url, auto_migrate=True)
    tricky = "tab\there\nnew line\\back slash\r ключ ✓ \b\f\v"
    batch = [p._replace(record=p.record._replace(resource_name=tricky, user_agent=tricky,
                                                 error_message=tricky))
             for p in prepared(4)]
    batch = [PreparedRecord(*normalise(p.record)) for p in batch]
    encoded = writer.encode(batch[:2])
    assert encoded is not None
    writer.write(batch[:2], encoded=encoded)  # the worker's COPY text
    writer.write(batch[2:])  # row by row through psycopg
    with writer.engine.connect() as conn:
        stored = conn.execute(select(audit_trails.c.resource_name, audit_trails.c.user_agent,
                                     audit_trails.c.error_message, audit_trails.c.new_values)
                              .order_by(audit_trails.c.id)).all()
    assert [tuple(r[:3]) for r in stored] == [(tricky, tricky, tricky)] * 4
    assert [r[3] for r in stored] == [p.record.new_values for p in batch]
    writer.dispose()


_cells = st.none() | st.text(max_size=3) | st.integers(-5, 5)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(0, 6), data=st.data())
def test_compiled_sqlite_params_equal_the_python_columns(width: int, data: st.DataObject,
                                                         speedups: Any) -> None:
    rows = data.draw(st.lists(st.tuples(*[_cells] * width), min_size=1, max_size=8))
    assert speedups.sqlite_params(rows) == _python_sqlite_params(rows)


def test_sqlite_params_leave_out_columns_null_in_every_row(speedups: Any) -> None:
    rows = [("a", None, 1, None), ("b", None, None, None), ("c", None, 3, None)]
    assert speedups.sqlite_params(rows) == ((0, 2), ["a", 1, "b", None, "c", 3])
    with pytest.raises(ValueError, match="different lengths"):
        speedups.sqlite_params([("a",), ("b", "c")])


def test_values_the_store_refuses_are_content_errors(store_url: str) -> None:
    writer = StoreWriter(store_url, auto_migrate=True)
    bad = prepared(1)[0]
    bad = bad._replace(record=bad.record._replace(schema_version=2**70))
    with pytest.raises(StoreError) as refused:  # SQLite: OverflowError; PostgreSQL: 22003
        writer.write([bad])
    assert not refused.value.transient
    encoded = writer.encode([bad])
    if encoded is not None:  # the compiled COPY text: the server refuses it the same way
        with pytest.raises(StoreError) as refused:
            writer.write([bad], encoded=encoded)
        assert not refused.value.transient
    writer.write(prepared(3))  # the connection is still usable
    assert count(writer) == 3
    writer.dispose()


def test_a_store_in_another_state_is_not_a_content_error() -> None:
    import sqlite3

    assert content_error(OverflowError("int too large"))
    assert content_error(sqlite3.ProgrammingError("Error binding parameter 1"))
    assert not content_error(sqlite3.OperationalError("database is locked"))
    assert not content_error(
        sqlite3.ProgrammingError("Cannot operate on a closed database."))
    assert not content_error(psycopg.OperationalError("server closed"))


def test_the_generic_path_tells_content_errors_apart(sqlite_url: str) -> None:
    writer = StoreWriter(sqlite_url, auto_migrate=True)
    writer.ensure_schema()
    writer.exporter = SQLAlchemyExporter(writer.engine)  # any other SQLAlchemy dialect
    bad = prepared(1)[0]
    bad = bad._replace(record=bad.record._replace(schema_version=2**70))
    with pytest.raises(StoreError) as refused:
        writer.write([bad])
    assert not refused.value.transient
    writer.write(prepared(2))
    assert count(writer) == 2
    writer.dispose()


def test_interrupt_without_waiting_returns_before_the_cancel_ends(sqlite_url: str) -> None:
    writer = StoreWriter(sqlite_url, auto_migrate=True)
    writer.write(prepared(1))  # the kept connection is open
    release, done = threading.Event(), threading.Event()
    released: list[bool] = []

    def cancel(_dbapi: Any) -> None:  # a cancel request an unreachable server holds up
        released.append(release.wait(10))
        done.set()

    writer.exporter._cancel = cancel  # type: ignore[method-assign]
    writer.interrupt(wait=False)
    release.set()  # reached while the cancel still waits: interrupt() did not wait for it
    assert done.wait(10) and released == [True]
    writer.dispose()
