"""Store writers: idempotent replay, the generic path, permanent errors, schema checks,
the compiled COPY."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from otel_audit import AuditTrail, StoreError
from otel_audit.record import AuditRecord, normalise
from otel_audit.store import writer as writer_module
from otel_audit.store.reader import query_records
from otel_audit.store.schema import audit_trails
from otel_audit.store.writer import PreparedRecord, StoreWriter, _python_sqlite_params


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
    writer._write_generic(batch)
    writer._write_generic(batch + prepared(5, start=20))
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


# ------------------------------------------------- the compiled COPY (otel_audit._pqcopy)
# psycopg's own libpq, one GIL release a batch: it must store what psycopg's COPY stores,
# classify failures alike (rejected: permanent; connection lost: transient, replaced),
# merge a replay, and say while it runs without the GIL.


def stored(writer: StoreWriter) -> list[tuple[Any, ...]]:
    with writer.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            select(audit_trails).order_by(audit_trails.c.id))]


@pytest.mark.postgres
def test_compiled_copy_stores_what_psycopg_copy_stores(
        pg_url: str, pqcopy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = StoreWriter(pg_url, auto_migrate=True)
    assert writer.busy is not None and writer.busy[0] == 0
    tricky = "tab\there\nnew line\\back slash\r ключ ✓ \b\f\v"
    batch = [p._replace(record=p.record._replace(resource_name=tricky, context={"k": tricky}))
             for p in prepared(20)]
    batch = [PreparedRecord(*normalise(p.record)) for p in batch]
    encoded = writer.encode(batch)
    assert encoded is not None
    writer.write(batch, encoded=encoded)
    compiled = stored(writer)
    with writer.engine.begin() as conn:
        conn.execute(text("TRUNCATE audit_trails"))
    monkeypatch.setattr(writer_module, "_pq_copy_in", lambda: None)  # psycopg's COPY
    writer.write(batch, encoded=encoded)
    assert stored(writer) == compiled and len(compiled) == 20
    writer.dispose()


@pytest.mark.postgres
def test_a_replay_through_the_compiled_copy_is_merged(pg_url: str, pqcopy: Any) -> None:
    writer = StoreWriter(pg_url, auto_migrate=True)
    first, overlap = prepared(30), prepared(20, start=20)
    writer.write(first, encoded=writer.encode(first))
    writer.write(first, encoded=writer.encode(first))  # a full replay
    writer.write(overlap, encoded=writer.encode(overlap))  # 10 stored + 10 new
    assert count(writer) == 40
    writer.dispose()


@pytest.mark.postgres
def test_a_rejected_copy_is_permanent_and_the_connection_kept(pg_url: str, pqcopy: Any) -> None:
    writer = StoreWriter(pg_url, auto_migrate=True)
    batch = prepared(5)
    with pytest.raises(StoreError) as rejected:
        writer.write(batch, encoded=b"not\ta row of this table\n")
    assert not rejected.value.transient
    assert str(getattr(rejected.value.__cause__, "sqlstate", "")).startswith("22")
    kept = writer._bulk
    assert kept is not None  # a rejected batch says nothing against the connection
    writer.write(batch, encoded=writer.encode(batch))
    assert writer._bulk is kept and count(writer) == 5
    writer.dispose()


@pytest.mark.postgres
def test_a_lost_connection_is_transient_and_replaced(pg_url: str, pqcopy: Any) -> None:
    writer = StoreWriter(pg_url, auto_migrate=True)
    writer.write(prepared(5), encoded=writer.encode(prepared(5)))
    assert writer._bulk is not None
    pid = writer._bulk.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
    with writer.engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    batch = prepared(5, start=5)
    with pytest.raises(StoreError) as failed:
        writer.write(batch, encoded=writer.encode(batch))
    assert failed.value.transient and writer._bulk is None
    assert isinstance(failed.value.__cause__, psycopg.OperationalError)
    writer.write(batch, encoded=writer.encode(batch))  # a new connection, and the retry lands
    assert count(writer) == 10
    writer.dispose()


@pytest.mark.postgres
def test_busy_is_set_while_the_copy_runs_without_the_gil(pg_url: str, pqcopy: Any) -> None:
    writer = StoreWriter(pg_url, auto_migrate=True)
    writer.write(prepared(1), encoded=writer.encode(prepared(1)))  # the connection is open
    batch = prepared(10, start=1)
    encoded = writer.encode(batch)
    assert writer.busy is not None
    locker = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"))
    locker.execute("LOCK TABLE audit_trails IN ACCESS EXCLUSIVE MODE")  # COPY waits on it
    errors: list[BaseException] = []

    def write() -> None:
        try:
            writer.write(batch, encoded=encoded)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    deadline = time.monotonic() + 10
    while not writer.busy[0] and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)
    assert writer.busy[0] == 1 and thread.is_alive()  # waiting on the lock, in libpq
    locker.rollback()  # the lock goes: the COPY commits
    thread.join(10)
    locker.close()
    assert not errors and not thread.is_alive()
    assert writer.busy[0] == 0 and count(writer) == 11
    writer.dispose()


@pytest.mark.postgres
def test_copy_in_refuses_what_it_cannot_use(pg_url: str, pqcopy: Any) -> None:
    conn = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"))
    conn.execute("SELECT 1")  # not autocommit: a transaction is open
    with pytest.raises(ValueError, match="not idle"):
        pqcopy(conn.pgconn.pgconn_ptr, b"COPY audit_trails (id) FROM STDIN", b"", None)
    conn.rollback()
    with pytest.raises(TypeError):
        pqcopy(conn.pgconn.pgconn_ptr, "COPY audit_trails (id) FROM STDIN", b"", None)
    with pytest.raises(TypeError, match="bytearray"):
        pqcopy(conn.pgconn.pgconn_ptr, b"COPY audit_trails (id) FROM STDIN", b"", bytearray())
    from otel_audit._pqcopy import Copier

    copier = Copier()
    with pytest.raises(TypeError, match="an int and two bytes"):
        copier.submit(conn.pgconn.pgconn_ptr, "COPY audit_trails (id) FROM STDIN", b"")
    with pytest.raises(TypeError, match="3 or 4 arguments"):
        copier.submit(conn.pgconn.pgconn_ptr, b"COPY audit_trails (id) FROM STDIN")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="no arguments"):
        Copier(1)  # type: ignore[call-arg]
    conn.close()
    with pytest.raises(TypeError):  # a closed connection has no pointer
        pqcopy(conn.pgconn.pgconn_ptr, b"COPY audit_trails (id) FROM STDIN", b"", None)
    with pytest.raises(TypeError):
        copier.submit(conn.pgconn.pgconn_ptr, b"COPY audit_trails (id) FROM STDIN", b"")
    assert copier.pending == 0 and not copier.halted


# ------------------------------------------- the copier thread (StoreWriter.send_ahead)
# batches handed over go out in order on a thread of the copier's own, without the GIL;
# the first failure halts it and the batches behind come back unsent.


def batches(n: int, size: int = 10, start: int = 0) -> list[list[PreparedRecord]]:
    return [prepared(size, start=start + i * size) for i in range(n)]


def locked(pg_url: str) -> psycopg.Connection[Any]:
    """A connection holding a lock that makes every COPY into the table wait."""
    locker = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"))
    locker.execute("LOCK TABLE audit_trails IN SHARE MODE")  # reads go on
    return locker


@pytest.mark.postgres
def test_the_copier_sends_what_it_is_handed_without_python(pg_url: str, pqcopy: Any) -> None:
    writer = StoreWriter(pg_url, auto_migrate=True)
    assert writer.sends_ahead()
    writer.ensure_schema()
    locker = locked(pg_url)
    work = batches(4)
    tickets = [writer.send_ahead(writer.encode(b) or b"") for b in work]
    assert all(t is not None for t in tickets)
    time.sleep(0.05)
    assert writer._copier.pending == 4 and count(writer) == 0  # queued behind the lock
    locker.rollback()  # from here the copier's thread alone commits them, in order
    locker.close()
    deadline = time.monotonic() + 10
    while writer._copier.pending and time.monotonic() < deadline:
        time.sleep(0.001)  # this thread never calls into the copier meanwhile
    assert writer._copier.pending == 0 and count(writer) == 40
    assert [writer.landed(b, t) for b, t in zip(work, tickets, strict=True)] == [True] * 4  # type: ignore[arg-type]
    writer.dispose()


@pytest.mark.postgres
def test_a_failed_batch_halts_the_copier_and_the_rest_come_back(pg_url: str, pqcopy: Any,
                                                                ) -> None:
    writer = StoreWriter(pg_url, auto_migrate=True)
    writer.ensure_schema()
    good, behind = batches(1), batches(2, start=100)
    locker = locked(pg_url)  # all four are queued before the first runs
    first = writer.send_ahead(writer.encode(good[0]) or b"")
    bad = writer.send_ahead(b"not\ta row of this table\n")
    rest = [writer.send_ahead(writer.encode(b) or b"") for b in behind]
    locker.rollback()
    locker.close()
    assert first is not None and bad is not None and None not in rest
    assert writer.landed(good[0], first) is True
    with pytest.raises(StoreError) as rejected:
        writer.landed(prepared(1, start=50), bad)
    assert not rejected.value.transient and writer._bulk is not None
    assert [writer.landed(b, t) for b, t in zip(behind, rest, strict=True)] == [False, False]  # type: ignore[arg-type]
    assert writer._copier.halted and writer.send_ahead(writer.encode(behind[0]) or b"") is None
    for batch in behind:  # what came back unsent is written as usual, in order
        writer.write(batch, encoded=writer.encode(batch))
    again = writer.send_ahead(writer.encode(prepared(5, start=200)) or b"", resume=True)
    assert again is not None and writer.landed(prepared(5, start=200), again) is True
    assert not writer._copier.halted and count(writer) == 10 + 20 + 5
    writer.dispose()


@pytest.mark.postgres
def test_a_replay_handed_to_the_copier_is_merged(pg_url: str, pqcopy: Any) -> None:
    writer = StoreWriter(pg_url, auto_migrate=True)
    writer.ensure_schema()
    batch, overlap = prepared(30), prepared(20, start=20)
    for b in (batch, batch, overlap):
        ahead = writer.send_ahead(writer.encode(b) or b"", resume=True)
        assert ahead is not None and writer.landed(b, ahead) is True
    assert count(writer) == 40
    writer.dispose()


@pytest.mark.postgres
def test_a_lost_connection_fails_the_running_batch_and_hands_back_the_rest(
        pg_url: str, pqcopy: Any) -> None:
    writer = StoreWriter(pg_url, auto_migrate=True)
    writer.ensure_schema()
    work = batches(3)
    locker = locked(pg_url)
    tickets = [writer.send_ahead(writer.encode(b) or b"") for b in work]
    assert writer._bulk is not None
    pid = writer._bulk.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
    locker.execute("SELECT pg_terminate_backend(%s)", (pid,))
    locker.rollback()
    locker.close()
    with pytest.raises(StoreError) as failed:
        writer.landed(work[0], tickets[0])  # type: ignore[arg-type]
    assert failed.value.transient and writer._bulk is None  # dropped, to be replaced
    rest = zip(work[1:], tickets[1:], strict=True)
    assert [writer.landed(b, t) for b, t in rest] == [False, False]  # type: ignore[arg-type]
    for batch in work:
        writer.write(batch, encoded=writer.encode(batch))  # a new connection
    assert count(writer) == 30
    writer.dispose()


@pytest.mark.postgres
def test_only_the_stock_postgres_writer_sends_ahead(pg_url: str, sqlite_url: str,
                                                    pqcopy: Any) -> None:
    assert not StoreWriter(sqlite_url).sends_ahead()
    assert StoreWriter(sqlite_url).send_ahead(b"x") is None
    writer = StoreWriter(pg_url, auto_migrate=True)
    assert writer.sends_ahead()
    real = writer.write

    def wrapped(batch: Any, **options: Any) -> None:
        real(batch, **options)

    writer.write = wrapped  # type: ignore[method-assign]
    assert not writer.sends_ahead()  # a wrapped write() must see every batch
    assert writer.send_ahead(b"x") is None

    class Audited(StoreWriter):
        def write(self, batch: Any, **options: Any) -> None:
            super().write(batch, **options)

    assert not Audited(pg_url).sends_ahead()
    writer.dispose()


class _Alarm(Exception):
    pass


@pytest.mark.postgres
def test_the_copiers_waits_are_bounded_and_honour_signals(pg_url: str, pqcopy: Any) -> None:
    import signal

    writer = StoreWriter(pg_url, auto_migrate=True)
    writer.ensure_schema()
    work = batches(1)
    locker = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"))
    locker.execute("LOCK TABLE audit_trails IN ACCESS EXCLUSIVE MODE")
    ticket = writer.send_ahead(writer.encode(work[0]) or b"")
    assert ticket is not None
    copier = writer._copier
    assert copier.settle(0.1) is False and copier.pending == 1  # bounded: still blocked

    def alarm(_signum: int, _frame: Any) -> None:
        raise _Alarm

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(_Alarm):  # the main thread's wait runs the signal handlers
            copier.settle()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    writer.interrupt()  # the statement is cancelled: a transient failure
    with pytest.raises(StoreError) as cancelled:
        writer.landed(work[0], ticket)
    assert cancelled.value.transient
    locker.rollback()
    locker.close()
    writer.write(work[0])  # the connection is replaced and the batch lands
    assert count(writer) == 10
    writer.dispose(timeout=1.0)


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

    assert writer_module._content_error(OverflowError("int too large"))
    assert writer_module._content_error(sqlite3.ProgrammingError("Error binding parameter 1"))
    assert not writer_module._content_error(sqlite3.OperationalError("database is locked"))
    assert not writer_module._content_error(
        sqlite3.ProgrammingError("Cannot operate on a closed database."))
    assert not writer_module._content_error(psycopg.OperationalError("server closed"))
    assert not writer_module._content_error(writer_module._ConnectionUnusable("not idle"))


@pytest.mark.postgres
def test_copy_in_waiting_for_a_lock_honours_signals(pg_url: str, pqcopy: Any) -> None:
    import signal

    writer = StoreWriter(pg_url, auto_migrate=True)
    writer.ensure_schema()
    work = prepared(5)
    encoded = writer.encode(work)
    assert encoded is not None
    conn = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"),
                           autocommit=True)
    locker = locked(pg_url)

    def alarm(_signum: int, _frame: Any) -> None:
        raise _Alarm

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(_Alarm):  # the handler ran while the COPY waited for the lock
            pqcopy(conn.pgconn.pgconn_ptr, writer_module._COPY_COMMAND, encoded, None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    locker.rollback()
    locker.close()
    assert count(writer) == 0  # the COPY was cancelled, and its connection is usable
    assert pqcopy(conn.pgconn.pgconn_ptr, writer_module._COPY_COMMAND, encoded, None) is None
    assert count(writer) == 5
    conn.close()
    writer.dispose()


def test_the_generic_path_tells_content_errors_apart(sqlite_url: str) -> None:
    writer = StoreWriter(sqlite_url, auto_migrate=True)
    writer.ensure_schema()
    writer.dialect = "generic"  # the path of any other SQLAlchemy dialect
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

    writer._cancel = cancel  # type: ignore[method-assign]
    writer.interrupt(wait=False)
    release.set()  # reached while the cancel still waits: interrupt() did not wait for it
    assert done.wait(10) and released == [True]
    writer.dispose()
