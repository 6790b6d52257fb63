"""Shutdown honours its deadline whatever the store does: a table locked by another
session holds the writes, shutdown returns in time, and what did not commit waits in
the spool for the next trail, which writes it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select

from otel_audit import AuditTrail
from otel_audit.integrity.verify import verify_trail
from otel_audit.store.schema import audit_trails

#: what shutdown may take beyond its timeout (a generous bound for a deadline promise,
#: not a performance target: the pipeline itself returns a few ms after it)
MARGIN = 1.5


@contextmanager
def _sqlite_locked(url: str) -> Iterator[None]:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@contextmanager
def _postgres_locked(url: str) -> Iterator[None]:
    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    conn.execute("LOCK TABLE audit_trails IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()


def _count(trail: AuditTrail, action: str) -> int:
    with trail.writer.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_trails).where(
            audit_trails.c.action == action)).scalar_one())


@pytest.mark.parametrize("timeout", [0.5, 2.0])
def test_shutdown_returns_in_time_with_the_table_locked_and_nothing_is_lost(
        store_url: str, tmp_path: Path, timeout: float, caplog: pytest.LogCaptureFixture,
) -> None:
    lock: Callable[[str], AbstractContextManager[None]] = (
        _sqlite_locked if store_url.startswith("sqlite") else _postgres_locked)
    spool = str(tmp_path / "spool")
    trail = AuditTrail(store_url, auto_migrate=True, flush_interval=0.01, spool_dir=spool)
    trail.record("WARM", user_id="u")
    assert trail.flush(10)
    with lock(store_url):
        for i in range(300):
            trail.record("HELD", user_id="u", new_values={"i": i})
        assert not trail.flush(0.2)  # the worker took them and waits for the lock
        started = time.monotonic()
        drained = trail.shutdown(timeout)
        elapsed = time.monotonic() - started
        stats = trail.stats()
    assert elapsed < timeout + MARGIN
    assert drained is False
    assert any("past the deadline" in r.getMessage() for r in caplog.records)
    assert stats.spooled == 300 and (stats.failed, stats.dropped) == (0, 0)
    later = AuditTrail(store_url, auto_migrate=True, flush_interval=0.01, spool_dir=spool)
    try:
        assert later.flush(30)
        assert _count(later, "HELD") == 300
        assert later.stats().replayed == 300
        assert verify_trail(later.writer.engine).ok
    finally:
        later.shutdown(5)


@pytest.mark.parametrize("round_", range(8))
def test_a_batch_given_up_at_the_deadline_is_counted_once(tmp_path: Path, round_: int) -> None:
    """Shutdown's deadline and the store thread giving up its retries meet on one batch:
    whichever accounts for it, ``failed`` counts each record once (no spool to keep it)."""
    from otel_audit.testing import InMemoryAuditExporter

    exporter = InMemoryAuditExporter()
    exporter.fail_all()
    trail = AuditTrail(exporter=exporter, spool_max_bytes=0, retry_max_backoff=0.02,
                       flush_interval=0.01, journal_dir=str(tmp_path / "journal"),
                       spool_dir=str(tmp_path / "spool"))
    for i in range(5):
        trail.record("READ", user_id=f"u{i}")
    assert trail.flush(0.1 + round_ * 0.02) is False  # retrying
    trail.shutdown(0.2 + round_ * 0.01)
    stats = trail.stats()
    assert (stats.enqueued, stats.written, stats.failed) == (5, 0, 5)
