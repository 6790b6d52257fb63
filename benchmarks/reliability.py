"""Reliability figures: loss and duplication under faults, drain time, durable cost, memory.

Printed, never asserted (the test-suite asserts the zeros; this reports the figures):

1. per scenario, records acknowledged / stored / lost / duplicated:
   * ``sqlite-locked``: a second connection holds ``BEGIN EXCLUSIVE`` while 4 threads
     write (async; the full queue spills to the spool);
   * ``pg-outage`` (with ``--pg URL``): backends terminated, then connections refused
     mid-load, then allowed again; time to drain reported;
   * ``sigkill-durable``: a producer in ``durable`` mode is SIGKILLed with the store
     locked; a new process replays its journal;
   * ``sigkill-async``: the same in ``async`` mode — what the queue held is lost, what
     was already spooled or committed is not;
   * ``poison``: one record in 50 holds a value that once stopped the worker, and the
     store refuses one record in 500 for its content as it was sealed (its safe form
     goes in): stored, failed, worker restarts, the chain positions verify reports
     missing and whether the quarantine holds a record for each, and the drain time
     next to a clean run's;
   * ``shutdown-locked`` (SQLite, and PostgreSQL with ``--pg``): ``shutdown(2)`` with
     the table locked by another session: how long it took, what went to the spool and
     what the next trail replayed;
2. per-call cost of ``record()`` in ``durable`` mode with each ``fsync`` policy versus
   ``async`` (median microseconds, same run, alternating rounds; 4 threads for
   ``batch``'s group commit);
3. peak memory (max RSS of a child process) during a burst of records with the store
   down (default 1,000,000; ``--quick``: 20,000);
4. overload: 4 threads record as fast as they can into a store slower than them, with a
   small queue (2,048) and with a queue that holds the whole load; records/s until
   flushed for each, their ratio (target >= 0.8x), the callers' p99 time per
   ``record()`` with the small queue (target <= 50 ms) and what was spooled or lost.

Usage: ``python benchmarks/reliability.py [--pg postgresql://...] [--quick] [--only overload]``
"""

from __future__ import annotations

import argparse
import decimal
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from otel_audit import AuditTrail
from otel_audit.errors import StoreError
from otel_audit.integrity.verify import verify_trail
from otel_audit.pipeline.segments import read_frames
from otel_audit.pipeline.spool import decode_record
from otel_audit.store.schema import audit_trails

_CHILD = r"""
import sys, threading
from otel_audit import AuditTrail
mode, url, state, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = AuditTrail(url, mode=mode, journal_dir=state + "/journal", spool_dir=state + "/spool",
               auto_migrate=True)
for i in range(n):
    print(t.record("KILL", user_id="c", resource_id=str(i)).id, flush=True)
print("DONE", flush=True)
threading.Event().wait()
"""

_REPLAY = r"""
import sys
from otel_audit import AuditTrail
url, state = sys.argv[1], sys.argv[2]
t = AuditTrail(url, mode="durable", journal_dir=state + "/journal",
               spool_dir=state + "/spool", auto_migrate=True)
print(t.flush(120)); t.shutdown(30)
"""

_BURST = r"""
import resource, sys, time
from otel_audit import AuditTrail
n, state = int(sys.argv[1]), sys.argv[2]
t = AuditTrail("postgresql://postgres@127.0.0.1:1/none", spool_dir=state + "/spool",
               retry_max_backoff=5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
for i in range(n):
    t.record("BURST", user_id="u", resource_id=str(i), new_values={"i": i, "note": "x" * 40})
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = t.stats()
print(before, peak, elapsed, s.spooled, s.dropped, s.queue_depth, s.spool_bytes)
"""


def _ids(url: str) -> list[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return list(conn.scalars(select(audit_trails.c.id)))
    finally:
        engine.dispose()


def _report(name: str, acked: list[str], url: str, extra: str = "") -> None:
    stored = _ids(url)
    lost = len(set(acked) - set(stored))
    dup = len(stored) - len(set(stored))
    print(f"{name:<16} acknowledged={len(acked):>7} stored={len(stored):>7} lost={lost:>6} "
          f"duplicated={dup}{extra}")


def _produce(trail: AuditTrail, threads: int, each: int) -> list[str]:
    ids: list[str] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        mine = [trail.record("LOAD", user_id=f"t{k}", resource_id=str(i)) for i in range(each)]
        with lock:
            ids.extend(r.id for r in mine if r is not None)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return ids


def sqlite_locked(tmp: Path, each: int) -> None:
    url = f"sqlite:///{tmp}/locked.db"
    trail = AuditTrail(url, auto_migrate=True, queue_size=2000, flush_interval=0.01,
                       spool_dir=str(tmp / "locked-spool"))
    trail.writer.ensure_schema()
    holder = sqlite3.connect(str(tmp / "locked.db"), timeout=0, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    timer = threading.Timer(3.0, lambda: (holder.rollback(), holder.close()))
    timer.start()
    ids = _produce(trail, 4, each)
    timer.join()
    start = time.perf_counter()
    trail.flush(120)
    drain = time.perf_counter() - start
    stats = trail.stats()
    trail.shutdown(10)
    _report("sqlite-locked", ids, url,
            f" spooled={stats.spooled} drain_after_unlock={drain:.2f}s")


class _Odd:
    def __bool__(self) -> bool:
        raise RuntimeError("no truth value")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


_POISON: list[dict[str, object]] = [
    {"context": {True: 1}}, {"context": {"n": 10**5000}},
    {"context": {"s": {decimal.Decimal("NaN"), 1}}},
    {"success": _Odd()}, {"service_name": "a\ud800b"}, {"new_values": [_Odd()]},
]


def _drain_time(trail: AuditTrail, n: int, poison: bool) -> float:
    start = time.perf_counter()
    for i in range(n):
        extra = _POISON[i // 50 % len(_POISON)] if poison and i % 50 == 0 else {}
        action = "POISON" if poison and i % 500 == 275 else "BENCH"
        trail.record(action, user_id="u", resource_id=str(i), **extra)  # type: ignore[arg-type]
    trail.flush(120)
    return time.perf_counter() - start


def poison(tmp: Path, n: int) -> None:
    clean = AuditTrail(f"sqlite:///{tmp}/clean.db", auto_migrate=True,
                       spool_dir=str(tmp / "clean" / "spool"))
    base = _drain_time(clean, n, poison=False)
    clean.shutdown(10)
    trail = AuditTrail(f"sqlite:///{tmp}/poison.db", auto_migrate=True,
                       spool_dir=str(tmp / "poison" / "spool"))
    write = trail.writer.write

    def refusing(batch: list, **kwargs: object) -> None:  # type: ignore[type-arg]
        if any(p.record.action == "POISON" and not p.record.context for p in batch):
            raise StoreError("refused for its content", transient=False)
        write(batch, **kwargs)  # type: ignore[arg-type]

    trail.writer.write = refusing  # type: ignore[method-assign]
    took = _drain_time(trail, n, poison=True)
    trail.record("LAST", user_id="u")  # a successor for the last refused position
    trail.flush(60)
    s = trail.stats()
    report = verify_trail(trail.writer.engine)
    missing: set[int] = set()
    for finding in report.findings:
        first, _, last = finding.detail.split()[1].partition("..")
        missing.update(range(int(first), int(last or first) + 1))
    quarantine = Path(trail.pipeline.quarantine.directory)  # type: ignore[union-attr]
    kept: set[int] = set()
    for segment in quarantine.glob("*.seg"):
        fd = os.open(segment, os.O_RDONLY)
        kept.update(decode_record(frame).seq or 0 for frame in read_frames(fd))
        os.close(fd)
    trail.shutdown(10)
    print(f"{'poison':<16} submitted={s.enqueued:>7} stored={s.written:>7} "
          f"failed={s.failed} restarts={s.worker_restarts} missing_positions={len(missing)} "
          f"all_in_quarantine={missing <= kept} other_findings="
          f"{sum(f.kind != 'deleted' for f in report.findings)} drain={took:.2f}s "
          f"(clean run {base:.2f}s, {took / base:.2f}x)")


def shutdown_locked(tmp: Path, url: str, name: str) -> None:
    spool = str(tmp / f"{name}-shutdown" / "spool")
    trail = AuditTrail(url, auto_migrate=True, flush_interval=0.01, spool_dir=spool)
    trail.record("WARM", user_id="u")
    trail.flush(30)
    if url.startswith("sqlite"):
        holder: object = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0,
                                         isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # type: ignore[attr-defined]
    else:
        import psycopg

        holder = psycopg.connect(str(make_url(url).set(drivername="postgresql")))
        holder.execute("LOCK TABLE audit_trails IN ACCESS EXCLUSIVE MODE")  # type: ignore[attr-defined]
    for i in range(2000):
        trail.record("HELD", user_id="u", resource_id=str(i))
    trail.flush(0.2)
    start = time.perf_counter()
    trail.shutdown(2)
    took = time.perf_counter() - start
    spooled = trail.stats().spooled
    holder.rollback()  # type: ignore[attr-defined]
    holder.close()  # type: ignore[attr-defined]
    later = AuditTrail(url, auto_migrate=True, spool_dir=spool)
    later.flush(60)
    replayed = later.stats().replayed
    later.shutdown(10)
    print(f"{'shutdown-locked':<16} {name:<10} shutdown(2) returned in {took:.2f}s "
          f"spooled={spooled} replayed_by_next_trail={replayed}")


def pg_outage(tmp: Path, pg: str, each: int) -> None:
    url = make_url(pg).set(drivername="postgresql+psycopg")
    name = f"otel_audit_bench_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = url.set(database=name).render_as_string(hide_password=False)

    def run(sql: str) -> None:
        with admin.connect() as conn:
            conn.execute(text(sql))

    try:
        trail = AuditTrail(db_url, auto_migrate=True, flush_interval=0.01,
                           retry_max_backoff=0.5, spool_dir=str(tmp / "pg-spool"))
        trail.writer.ensure_schema()
        done = threading.Event()
        ids: list[str] = []

        def load() -> None:
            ids.extend(_produce(trail, 4, each))
            done.set()

        producer = threading.Thread(target=load)
        producer.start()
        terminate = (f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
        for _ in range(3):
            run(terminate)
            time.sleep(0.1)
        run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        run(terminate)
        done.wait(300)
        producer.join()
        time.sleep(1.0)  # an outage of at least a second after the load
        spooled = trail.stats().spooled
        run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        start = time.perf_counter()
        trail.flush(300)
        drain = time.perf_counter() - start
        trail.shutdown(10)
        _report("pg-outage", ids, db_url, f" spooled={spooled} time_to_drain={drain:.2f}s")
    finally:
        run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def sigkill(tmp: Path, mode: str, n: int) -> None:
    state = tmp / f"kill-{mode}"
    url = f"sqlite:///{state}/store.db"
    state.mkdir()
    AuditTrail(url, auto_migrate=True).writer.ensure_schema()
    holder = sqlite3.connect(str(state / "store.db"), timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, mode, url, str(state), str(n)],
                             stdout=subprocess.PIPE, text=True)
    acked: list[str] = []
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == "DONE":
            break
        acked.append(line.strip())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    holder.rollback()
    holder.close()
    subprocess.run([sys.executable, "-c", _REPLAY, url, str(state)], check=True,
                   capture_output=True, timeout=300)
    _report(f"sigkill-{mode}", acked, url)


def durable_cost(tmp: Path, calls: int, rounds: int) -> None:
    trails = {
        "async": AuditTrail(f"sqlite:///{tmp}/cost.db", auto_migrate=True),
        "durable/never": AuditTrail(f"sqlite:///{tmp}/cost.db", mode="durable", fsync="never",
                                    journal_dir=str(tmp / "j-never")),
        "durable/batch": AuditTrail(f"sqlite:///{tmp}/cost.db", mode="durable", fsync="batch",
                                    journal_dir=str(tmp / "j-batch")),
        "durable/always": AuditTrail(f"sqlite:///{tmp}/cost.db", mode="durable",
                                     fsync="always", journal_dir=str(tmp / "j-always")),
    }
    samples: dict[str, list[float]] = {name: [] for name in trails}
    threaded: dict[str, list[float]] = {name: [] for name in trails}
    for _ in range(rounds):
        for name, trail in trails.items():
            start = time.perf_counter()
            for i in range(calls):
                trail.record("COST", user_id="u", resource_id=str(i))
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
            barrier = threading.Barrier(4)

            def work(trail: AuditTrail = trail, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                for i in range(calls // 4):
                    trail.record("COST", user_id="u", resource_id=str(i))

            workers = [threading.Thread(target=work) for _ in range(4)]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            threaded[name].append((time.perf_counter() - start) / (calls // 4 * 4) * 1e6)
            trail.flush(60)
    base = statistics.median(samples["async"])
    base_t = statistics.median(threaded["async"])
    for name, trail in trails.items():
        one = statistics.median(samples[name])
        four = statistics.median(threaded[name])
        journal = trail.pipeline.journal
        fsyncs = journal.fsyncs if journal is not None else 0
        print(f"record() {name:<15} 1 thread {one:8.2f} us/call ({one / base:6.1f}x async)   "
              f"4 threads {four:8.2f} us/call wall ({four / base_t:6.1f}x async)   "
              f"fsyncs={fsyncs}")
    for trail in trails.values():
        trail.shutdown(30)


def burst_memory(tmp: Path, n: int) -> None:
    state = tmp / "burst"
    state.mkdir()
    out = subprocess.run([sys.executable, "-c", _BURST, str(n), str(state)], check=True,
                         capture_output=True, text=True, timeout=3600).stdout.split()
    before, peak = int(out[0]), int(out[1])
    elapsed, spooled, dropped, depth, spool_bytes = float(out[2]), *map(int, out[3:7])
    print(f"burst of {n:,} records with the store down: peak RSS {peak / 1024:.0f} MiB "
          f"(+{(peak - before) / 1024:.0f} MiB over the {before / 1024:.0f} MiB start), "
          f"{elapsed / n * 1e6:.1f} us/record, spooled={spooled:,} in memory={depth:,} "
          f"dropped={dropped} spool={spool_bytes / 2**20:.0f} MiB")


def _overload_run(url: str, n: int, queue_size: int, spool: Path,
                  ) -> tuple[float, float, float, int, int]:
    """records/s until flushed, the callers' p99 and longest seconds per record(),
    spooled, lost."""
    trail = AuditTrail(url, auto_migrate=True, queue_size=queue_size, spool_dir=str(spool))
    trail.writer.ensure_schema()  # the migration is not part of the load
    threads, each = 4, n // 4
    times: list[list[float]] = [[] for _ in range(threads)]
    ids: list[str] = []
    lock = threading.Lock()
    clock = time.perf_counter

    def work(k: int) -> None:
        mine, spent = [], times[k]
        for i in range(each):
            t0 = clock()
            record = trail.record("LOAD", user_id=f"t{k}", resource_id=str(i))
            spent.append(clock() - t0)
            if record is not None:
                mine.append(record.id)
        with lock:
            ids.extend(mine)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    start = clock()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    trail.flush(600)
    rate = len(ids) / (clock() - start)
    stats = trail.stats()
    trail.shutdown()
    stored = set(_ids(url))
    waits = sorted(t for per in times for t in per)
    p99 = waits[int(len(waits) * 0.99)] if waits else 0.0
    return rate, p99, waits[-1] if waits else 0.0, stats.spooled, len(set(ids) - stored)


def overload(tmp: Path, n: int, pg: str | None) -> None:
    """Small queue vs a queue holding the whole load, side by side (see the docstring)."""
    stores = [("sqlite", lambda tag: f"sqlite:///{tmp}/overload-{tag}.db")]
    if pg:
        stores.append(("postgresql", lambda tag: _bench_database(pg, f"overload_{tag}")))
    for name, url_for in stores:
        small = _overload_run(url_for("small"), n, 2048, tmp / f"ov-{name}-small")
        large = _overload_run(url_for("large"), n, n + 1024, tmp / f"ov-{name}-large")
        ratio = small[0] / large[0]
        print(f"overload {name:<10} queue 2,048: {small[0]:,.0f} rec/s | queue {n + 1024:,}: "
              f"{large[0]:,.0f} rec/s | ratio {ratio:.2f}x (target >= 0.80) "
              f"{'OK' if ratio >= 0.8 else 'MISS'} | caller p99 {small[1] * 1e3:.2f} ms "
              f"(target <= 50), longest {small[2] * 1e3:.0f} ms | spooled {small[3]:,} / "
              f"{large[3]:,} | lost {small[4]} / {large[4]}")


def _bench_database(pg: str, suffix: str) -> str:
    """URL of an empty database for one scenario (created anew)."""
    url = make_url(pg).set(drivername="postgresql+psycopg")
    name = f"otel_audit_bench_{suffix}_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg", help="PostgreSQL admin URL for the outage scenario")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--only", choices=["overload"], help="run this part only")
    args = parser.parse_args()
    each = 500 if args.quick else 5000
    calls, rounds = (400, 2) if args.quick else (4000, 5)
    burst = 20_000 if args.quick else 1_000_000
    pg = args.pg or os.environ.get("OTEL_AUDIT_TEST_POSTGRES_URL")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if args.only == "overload":
            print("== overload: a small queue vs one that holds the load")
            overload(tmp, 20_000 if args.quick else 200_000, pg)
            return
        print("== records lost / duplicated under faults")
        sqlite_locked(tmp, each)
        if pg:
            pg_outage(tmp, pg, each)
        else:
            print("pg-outage        skipped (no --pg / OTEL_AUDIT_TEST_POSTGRES_URL)")
        sigkill(tmp, "durable", 200 if args.quick else 2000)
        sigkill(tmp, "async", 200 if args.quick else 2000)
        poison(tmp, 5000 if args.quick else 50_000)
        shutdown_locked(tmp, f"sqlite:///{tmp}/shutdown.db", "sqlite")
        if pg:
            bench = _bench_database(pg, "shutdown")
            shutdown_locked(tmp, bench, "postgresql")
        print("== per-call cost of durable vs async")
        durable_cost(tmp, calls, rounds)
        print("== memory")
        burst_memory(tmp, burst)
        print("== overload: a small queue vs one that holds the load")
        overload(tmp, 20_000 if args.quick else 200_000, pg)


if __name__ == "__main__":
    main()
