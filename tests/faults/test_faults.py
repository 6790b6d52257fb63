"""Real faults, bounded in time: a locked SQLite file, PostgreSQL backends terminated and
connections refused mid-load, SIGKILL in ``durable`` mode, an unusable spool, and many
threads and processes writing at once. Every scenario counts lost and duplicated rows."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from otel_audit import AuditTrail
from otel_audit.store.schema import audit_trails

Factory = Callable[..., AuditTrail]
PRODUCER = str(Path(__file__).with_name("_producer.py"))


def _ids(url: str) -> list[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return list(conn.scalars(select(audit_trails.c.id)))
    finally:
        engine.dispose()


def _count(trail: AuditTrail) -> tuple[int, int]:
    with trail.writer.engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(audit_trails))
        distinct = conn.scalar(select(func.count(audit_trails.c.id.distinct())))
    return int(total or 0), int(distinct or 0)


def _produce(trail: AuditTrail, threads: int, each: int, action: str = "LOAD") -> list[str]:
    ids: list[str] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        mine = [trail.record(action, user_id=f"t{k}", resource_id=str(i)) for i in range(each)]
        with lock:
            ids.extend(r.id for r in mine if r is not None)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return ids


def test_sqlite_locked_by_another_connection_under_load(sqlite_url: str, tmp_path: Path) -> None:
    trail = AuditTrail(sqlite_url, auto_migrate=True, flush_interval=0.01, queue_size=500,
                       spool_dir=str(tmp_path / "spool"))
    trail.record("WARMUP", user_id="u", mode="sync")
    holder = sqlite3.connect(make_url(sqlite_url).database,  # type: ignore[arg-type]
                             timeout=0, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release_after_load() -> None:
        released.wait(3)  # the fault lasts until the load is done or 3 s, whichever first
        holder.rollback()
        holder.close()

    keeper = threading.Thread(target=release_after_load)
    keeper.start()
    ids = _produce(trail, threads=4, each=1000)
    released.set()
    keeper.join()
    assert trail.flush(60)
    stats = trail.stats()
    assert _count(trail) == (4001, 4001)
    assert set(ids) <= set(_ids(sqlite_url))
    assert (stats.dropped, stats.failed, stats.spool_records) == (0, 0, 0)
    assert stats.spooled > 0  # the full queue spilled while the file was locked
    trail.shutdown(5)


@pytest.fixture
def pg_admin(pg_url: str) -> Iterator[Callable[[str], None]]:
    """Run statements against the trail's database from an admin connection elsewhere."""
    url = make_url(pg_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def run(sql: str) -> None:
        with admin.connect() as conn:
            conn.execute(text(sql.replace("{db}", str(url.database))))

    yield run
    run('ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
    admin.dispose()


TERMINATE = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE datname = '{db}' AND pid <> pg_backend_pid()")


@pytest.mark.postgres
def test_postgres_backends_terminated_and_refused_mid_load(
    pg_url: str, pg_admin: Callable[[str], None], tmp_path: Path
) -> None:
    trail = AuditTrail(pg_url, flush_interval=0.01, batch_size=200, retry_max_backoff=0.2,
                       spool_dir=str(tmp_path / "spool"))
    # the writer holds its connection, then loses it: its next write fails for sure
    ids: list[str] = _produce(trail, threads=1, each=1, action="WARM")
    assert trail.flush(30)
    pg_admin(TERMINATE)
    phase = threading.Event()

    def load() -> None:
        ids.extend(_produce(trail, threads=2, each=1500))
        phase.set()

    producer = threading.Thread(target=load)
    producer.start()
    for _ in range(2):  # connections killed under the writer's feet
        pg_admin(TERMINATE)
    pg_admin('ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')  # an outage: nothing connects
    pg_admin(TERMINATE)
    phase.wait(60)
    producer.join()
    pg_admin('ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
    assert trail.flush(60)
    stats = trail.stats()
    stored = _ids(pg_url)
    assert len(stored) == len(set(stored)) == 3001  # zero lost, zero duplicated
    assert set(stored) == set(ids)
    assert (stats.dropped, stats.failed) == (0, 0)
    assert stats.retried > 0  # the lost connection and the outage were felt
    assert stats.spool_records == 0
    trail.shutdown(5)


def test_sigkill_in_durable_mode_loses_no_acknowledged_record(
    sqlite_url: str, tmp_path: Path
) -> None:
    AuditTrail(sqlite_url, auto_migrate=True).writer.ensure_schema()
    holder = sqlite3.connect(make_url(sqlite_url).database, timeout=0)  # type: ignore[arg-type]
    holder.execute("BEGIN EXCLUSIVE")  # the store cannot commit: acks come from the journal
    child = subprocess.Popen(
        [sys.executable, PRODUCER, "durable", sqlite_url, str(tmp_path), "300", "1"],
        stdout=subprocess.PIPE, text=True)
    acked: list[str] = []
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == "DONE":
            break
        acked.append(line.strip())
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    holder.rollback()
    holder.close()
    assert len(acked) == 300
    assert _ids(sqlite_url) == []  # nothing reached the store before the kill
    heir = subprocess.run(
        [sys.executable, PRODUCER, "replay", sqlite_url, str(tmp_path), "0", "0"],
        check=False, capture_output=True, text=True, timeout=120)
    assert "FLUSHED" in heir.stdout, heir.stdout + heir.stderr
    stored = _ids(sqlite_url)
    assert sorted(stored) == sorted(acked)  # every acknowledged ID, exactly once
    assert os.listdir(tmp_path / "journal") == []


@pytest.mark.parametrize("fault", ["file_in_place", "cap_reached"])
def test_unusable_spool_applies_the_overflow_policy(
    fault: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    settings: dict[str, object] = {}
    if fault == "file_in_place":
        spool.write_text("a file where the spool directory should be")
    else:
        settings["spool_max_bytes"] = 2000
    trail = AuditTrail("postgresql://postgres@127.0.0.1:1/none", spool_dir=str(spool),
                       queue_size=20, overflow_policy="drop_newest", flush_interval=60,
                       batch_size=1000, **settings)
    trail.pipeline._start_worker = lambda: None  # type: ignore[method-assign]  # keep it full
    for i in range(100):
        assert trail.record("A", user_id="u", resource_id=str(i)) is not None
    stats = trail.stats()
    assert stats.queue_depth == 20
    assert stats.dropped == 100 - 20 - stats.spooled > 0
    reason = "spool_unwritable" if fault == "file_in_place" else "spool_full"
    assert reason in caplog.text
    trail.shutdown(0.1)


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql",
                                                          marks=pytest.mark.postgres)])
def test_sixteen_threads_and_four_processes(store: str, request: pytest.FixtureRequest,
                                           tmp_path: Path) -> None:
    url = str(request.getfixturevalue("sqlite_url" if store == "sqlite" else "pg_url"))
    trail = AuditTrail(url, auto_migrate=True, spool_dir=str(tmp_path / "spool"))
    trail.writer.ensure_schema()
    children = [
        subprocess.Popen([sys.executable, PRODUCER, "async", url, str(tmp_path), "400", "4"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    ids = _produce(trail, threads=16, each=400)
    outputs = [child.communicate(timeout=180) for child in children]
    assert all(out.startswith("OK") for out, _ in outputs), outputs
    assert trail.flush(60)
    total, distinct = _count(trail)
    assert total == distinct == 16 * 400 + 4 * 4 * 400
    assert set(ids) <= set(_ids(url))
    trail.shutdown(5)
