"""The pipeline's store stage: batches committed one at a time, in order, on its thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from otel_audit import AuditTrail
from otel_audit.errors import StoreError
from otel_audit.exporters import postgres
from otel_audit.integrity.verify import verify_trail
from otel_audit.pipeline import stage as stage_module
from otel_audit.pipeline.stage import StoreStage
from otel_audit.testing import InMemoryAuditExporter, capture_audit

KEY = "store-stage-key"


def write_records(trail: AuditTrail, count: int, *, start: int = 0) -> None:
    for i in range(start, start + count):
        trail.record("UPDATE", user_id=f"user-{i % 4}", resource_type="tool",
                     resource_id=f"tool-{i}", new_values={"n": i, "name": f"new-{i} é"})


def verify(trail: AuditTrail) -> bool:
    return verify_trail(trail.writer.engine, key=KEY.encode()).ok


def test_jobs_run_one_at_a_time_in_order_on_the_store_thread() -> None:
    stage = StoreStage()
    done: list[int] = []
    threads: set[str] = set()
    running = threading.Semaphore(1)  # a second job running at once would find it taken

    def job(n: int) -> None:
        assert running.acquire(blocking=False), "two jobs ran at once"
        threads.add(threading.current_thread().name)
        time.sleep(0.001)
        done.append(n)
        running.release()

    for n in range(50):
        stage.run(lambda n=n: job(n))
    stage.wait()
    assert done == list(range(50))
    assert threads == {"otel-audit-store"}
    stage.stop()


def test_run_blocks_while_a_job_waits_behind_the_running_one() -> None:
    stage = StoreStage()
    release = threading.Event()
    started = threading.Event()

    def first() -> None:
        started.set()
        release.wait(5)

    stage.run(first)
    assert started.wait(5)
    stage.run(lambda: None)  # waits in the slot behind the running job
    third_queued = threading.Event()

    def queue_third() -> None:
        stage.run(lambda: None)
        third_queued.set()

    threading.Thread(target=queue_third).start()
    assert not third_queued.wait(0.2)  # the slot is taken: run() blocks
    release.set()
    assert third_queued.wait(5)
    stage.wait()
    stage.stop()


def test_after_stop_jobs_run_on_the_calling_thread() -> None:
    stage = StoreStage()
    ran: list[str] = []
    stage.run(lambda: ran.append(threading.current_thread().name))
    stage.stop()
    stage.run(lambda: ran.append(threading.current_thread().name))
    assert ran == ["otel-audit-store", threading.current_thread().name]


def test_a_failing_job_does_not_stop_the_stage() -> None:
    stage = StoreStage()
    done: list[int] = []

    def boom() -> None:
        raise RuntimeError("job bug")

    stage.run(boom)
    stage.run(lambda: done.append(1))
    stage.wait()
    assert done == [1]
    stage.stop()


def test_pause_lets_go_only_when_the_store_thread_likely_wants_the_gil(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No pause while a job is likely still in the database (recent jobs took long);
    a pause after every chunk once the worker had to wait for a slot (the store is the
    slower stage)."""
    stage = StoreStage()
    stage._recent.append(60.0)  # recent jobs took a minute: a job just started is away
    gates = [threading.Event() for _ in range(3)]
    started = [threading.Event() for _ in range(3)]

    def job(n: int) -> None:
        started[n].set()
        gates[n].wait(5)

    stage.run(lambda: job(0))
    assert started[0].wait(5)
    me, real_sleep, sleeps = threading.current_thread(), time.sleep, []

    def sleep(seconds: float) -> None:  # this thread's pauses only
        if threading.current_thread() is me:
            sleeps.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(stage_module.time, "sleep", sleep)
    stage.pause()
    assert sleeps == []  # the running job is likely in the database
    stage.run(lambda: job(1))  # takes the free slot at once
    calling = threading.Event()

    def queue_third() -> None:
        calling.set()
        stage.run(lambda: job(2))

    third = threading.Thread(target=queue_third)
    third.start()
    assert calling.wait(5)
    third.join(0.2)
    assert third.is_alive()  # the worker waits for a slot: the store is slower
    gates[0].set()
    third.join(5)
    assert started[1].wait(5)
    stage.pause()
    assert sleeps == [0]
    monkeypatch.undo()
    gates[1].set()
    gates[2].set()
    stage.wait()
    stage.stop()


def test_up_to_depth_jobs_wait_behind_the_running_one() -> None:
    stage = StoreStage(depth=3)
    release, started = threading.Event(), threading.Event()
    done: list[int] = []

    def first() -> None:
        started.set()
        release.wait(5)

    stage.run(first)
    assert started.wait(5)
    for n in range(3):  # three wait without blocking the caller
        stage.run(lambda n=n: done.append(n))
    fifth = threading.Thread(target=stage.run, args=(lambda: done.append(3),))
    fifth.start()
    fifth.join(0.2)
    assert fifth.is_alive()  # the fourth waiting job blocks until one is taken
    release.set()
    fifth.join(5)
    stage.wait()
    assert done == [0, 1, 2, 3]
    stage.stop()


def test_unthreaded_jobs_run_on_the_calling_thread_in_order() -> None:
    stage = StoreStage(depth=3, threaded=False)
    ran: list[tuple[int, str]] = []

    def boom() -> None:
        raise RuntimeError("job bug")

    stage.run(lambda: ran.append((0, threading.current_thread().name)))
    stage.run(boom)  # logged, never raised to the worker
    stage.run(lambda: ran.append((1, threading.current_thread().name)))
    assert stage.idle()
    stage.wait()
    me = threading.current_thread().name
    assert ran == [(0, me), (1, me)]
    assert "otel-audit-store" not in {t.name for t in threading.enumerate()}
    stage.stop()


def _committing_threads(trail: AuditTrail) -> set[str]:
    names: set[str] = set()
    trail.pipeline.on_written.append(lambda batch: names.add(threading.current_thread().name))
    write_records(trail, 120)
    assert trail.flush(30)
    return names


def test_each_store_commits_its_batches_on_its_thread(
        make_trail: Callable[..., AuditTrail], store_url: str) -> None:
    """SQLite's inserts on the store thread (in-process work, on another core); other
    stores' writes on the worker itself (one thread, no hand-off per batch; the server
    works apart); order, chaining and counts as ever."""
    trail = make_trail(batch_size=16, hmac_key=KEY)
    expected = "otel-audit-store" if store_url.startswith("sqlite") else "otel-audit-writer"
    assert _committing_threads(trail) == {expected}
    assert trail.stats().written == 120
    assert verify(trail)


def test_an_exporter_with_a_thread_of_its_own_is_written_there() -> None:
    with capture_audit(batch_size=16) as captured:
        assert _committing_threads(captured.trail) == {"otel-audit-store"}
        assert len(captured.records) == 120
    with capture_audit(_WorkerExporter(), batch_size=16) as captured:
        assert _committing_threads(captured.trail) == {"otel-audit-writer"}
        assert len(captured.records) == 120


class _WorkerExporter(InMemoryAuditExporter):
    own_thread = False


# ------------------------------------------- PostgreSQL: batches queued behind a write


def _backend_pid(trail: AuditTrail) -> int:
    bulk = trail.writer._bulk
    assert bulk is not None
    return int(bulk.connection.driver_connection.info.backend_pid)  # type: ignore[union-attr]


def _waits_for_a_lock(pg_url: str, pid: int) -> bool:
    """Whether the backend ``pid`` comes to wait for a lock (polled, up to 10 s)."""
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as watcher:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = watcher.execute("SELECT wait_event_type FROM pg_stat_activity "
                                  "WHERE pid = %s", (pid,)).fetchone()
            if row is not None and row[0] == "Lock":
                return True
            time.sleep(0.005)
    return False


def _seq_in_commit_order(trail: AuditTrail) -> list[int]:
    """The chain positions in the order their transactions wrote them (COPY and merge:
    one transaction a batch, transaction IDs given out in order)."""
    with trail.writer.engine.connect() as conn:
        return [int(s) for s in conn.execute(text(
            "SELECT seq FROM audit_trails ORDER BY xmin::text::bigint, seq")).scalars()]


@pytest.mark.postgres
def test_a_lost_connection_under_queued_batches_loses_and_reorders_nothing(
        pg_url: str) -> None:
    trail = AuditTrail(pg_url, batch_size=50, hmac_key=KEY, retry_max_backoff=0.05)
    write_records(trail, 50)
    assert trail.flush(10)  # the writer's connection is open
    locker = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"))
    locker.execute("LOCK TABLE audit_trails IN SHARE MODE")  # reads go on
    write_records(trail, 300, start=50)  # six batches: one waits on the lock, the rest queued
    assert _waits_for_a_lock(pg_url, _backend_pid(trail))
    locker.execute("SELECT pg_terminate_backend(%s)", (_backend_pid(trail),))
    locker.rollback()
    locker.close()
    write_records(trail, 150, start=350)  # more behind them, while the store recovers
    assert trail.flush(30)
    stats = trail.stats()
    assert stats.written == 500 and stats.retried >= 1 and stats.failed == 0
    assert _seq_in_commit_order(trail) == list(range(1, 501))
    assert verify(trail)
    trail.shutdown()


@pytest.mark.postgres
def test_a_streamed_batch_that_fails_midway_is_written_again_whole(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The COPY fails after its first chunks went out: nothing of it is stored, the
    records prepared so far keep their chain positions, the rest is prepared, and the
    whole batch is written the usual way (one retry counted), in order."""
    sends: list[int] = []
    real_send = postgres.CopyStream.send

    def send(self: postgres.CopyStream, part: Any) -> None:
        sends.append(len(part))
        if len(sends) == 3:  # the third chunk of the first batch
            raise StoreError("connection lost mid-COPY")
        real_send(self, part)

    monkeypatch.setattr(postgres.CopyStream, "send", send)
    trail = AuditTrail(pg_url, batch_size=200, hmac_key=KEY, flush_interval=0.05)
    write_records(trail, 400)
    assert trail.flush(30)
    stats = trail.stats()
    assert (stats.written, stats.retried, stats.failed) == (400, 1, 0)
    assert _seq_in_commit_order(trail) == list(range(1, 401))
    assert verify(trail)
    assert len(sends) > 3  # the next batch streamed again
    trail.shutdown()


@pytest.mark.postgres
def test_a_streamed_replay_of_stored_records_merges_them(pg_url: str) -> None:
    """Records already stored come again (a journal replayed after a crash between
    commit and forget): the COPY refuses the duplicates, the usual write merges them,
    no row twice, no retry counted."""
    trail = AuditTrail(pg_url, batch_size=100, hmac_key=KEY, flush_interval=0.05)
    written: list[Any] = []
    trail.pipeline.on_written.append(written.extend)
    write_records(trail, 150)
    assert trail.flush(30)
    for prepared in written[:120]:
        trail.pipeline.submit(prepared)
    assert trail.flush(30)
    stats = trail.stats()
    assert (stats.retried, stats.failed) == (0, 0)
    with trail.writer.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_trails")).scalar_one() == 150
    assert verify(trail)
    trail.shutdown()
