"""The store exporters tell whether a batch went in whole, and the chain's duplicate check
relies on it only when they do."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import func, select

from otel_audit import AuditTrail
from otel_audit.record import AuditRecord, normalise
from otel_audit.store.schema import audit_duplicates, audit_trails
from otel_audit.store.writer import PreparedRecord, StoreWriter


def prepared(n: int, start: int = 0) -> list[PreparedRecord]:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return [PreparedRecord(*normalise(AuditRecord(
        id=f"{i:032x}", timestamp=base + dt.timedelta(seconds=i), action="READ",
        user_id="u", resource_id=str(i)))) for i in range(start, start + n)]


def test_a_batch_stored_whole_is_known_as_such(store_url: str) -> None:
    writer = StoreWriter(store_url, auto_migrate=True)
    try:
        exporter = writer.exporter
        batch = prepared(20)
        assert not exporter.stored_all(batch)  # nothing written yet
        writer.write(batch)
        assert not exporter.stored_all(list(batch))  # another object: not known
        assert exporter.stored_all(batch)
        assert not exporter.stored_all(batch)  # answered once: the batch is let go
        writer.write(batch)  # a replay of a batch stored whole: nothing goes in
        assert not exporter.stored_all(batch)
        again = prepared(30, start=10)  # 10 stored before, 20 new
        writer.write(again)
        assert not exporter.stored_all(again)
        writer.write(prepared(5, start=100))
        replay = prepared(20)  # every row stored before
        writer.write(replay)
        assert not exporter.stored_all(replay)
    finally:
        writer.dispose()


def test_a_batch_larger_than_one_statement_is_counted_whole(sqlite_url: str) -> None:
    from otel_audit.exporters.sqlite import ROWS_PER_STATEMENT

    writer = StoreWriter(sqlite_url, auto_migrate=True)
    try:
        batch = prepared(ROWS_PER_STATEMENT * 2 + 3)
        writer.write(batch)
        assert writer.exporter.stored_all(batch)
        overlap = prepared(ROWS_PER_STATEMENT * 2 + 3, start=ROWS_PER_STATEMENT * 2 + 2)
        writer.write(overlap)  # its first row was stored, in its first statement
        assert not writer.exporter.stored_all(overlap)
    finally:
        writer.dispose()


def test_the_outbox_and_other_threads_are_never_known_whole(store_url: str) -> None:
    import threading

    writer = StoreWriter(store_url, auto_migrate=True)
    try:
        batch = prepared(3)
        writer.write(batch)
        seen: list[bool] = []
        thread = threading.Thread(target=lambda: seen.append(writer.exporter.stored_all(batch)))
        thread.start()
        thread.join()
        assert seen == [False]  # what a write on another thread did is not known here
        outbox = prepared(3, start=50)
        with writer.engine.begin() as conn:
            writer.write_on(conn, outbox)
        assert not writer.exporter.stored_all(outbox)
        assert not writer.exporter.stored_all(batch)  # forgotten at the outbox write
        writer.write(prepared(2, start=70))
        writer.write(batch)  # nothing goes in: its rows are stored
        assert not writer.exporter.stored_all(batch)
    finally:
        writer.dispose()


def test_duplicates_are_still_noted_when_a_batch_is_not_whole(
        make_trail: Callable[..., AuditTrail]) -> None:
    trail = make_trail()
    record = trail.build_record("UPDATE", user_id="u", resource_id="r")._replace(id="client-1")
    trail.submit(record)
    assert trail.flush(10)
    trail.submit(record)  # sealed again at the next position, then not stored
    trail.submit(trail.build_record("UPDATE", user_id="u", resource_id="s"))
    assert trail.flush(10)
    with trail.writer.engine.connect() as conn:
        stored = conn.scalar(select(func.count()).select_from(audit_trails))
        noted = conn.scalar(select(func.count()).select_from(audit_duplicates))
    assert (stored, noted) == (2, 1)
    assert trail.stats().duplicates == 1
