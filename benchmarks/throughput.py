"""Throughput of the audit trail against the store's own limit and the seed's pattern.

For SQLite and PostgreSQL, in one run, on the same table:

* end-to-end records/s: ``trail.record()`` for N records until ``flush()`` returns
  (everything committed);
* the store's limit: the same rows (redacted, normalised and sealed by the trail's own
  pipeline beforehand), through the raw driver, batches of the trail's size, each
  committed, into the same table (same indexes, same connection settings): the faster of
  the driver's plain use (SQLite ``executemany``; PostgreSQL COPY row by row with
  psycopg's ``write_row``) and the driver sending exactly what the trail sends, made
  beforehand (SQLite: the trail's multi-row ``INSERT OR IGNORE`` with the columns NULL
  in every row of a batch left out; PostgreSQL: psycopg's ``copy.write`` of the COPY
  text of the compiled encoder). The raw limit does not depend on the path measured:
  the pure-Python run uses the same baseline;
* the seed's pattern: one ORM session, ``add``, ``commit``, ``refresh`` per record.

Also the pipeline alone (records built beforehand, queued at once), and this process's
CPU time per record (all threads) end to end and raw: the figure a loaded machine
disturbs least (on PostgreSQL the server's own work is not in it), and on Linux the
same per thread (the caller, the trail's worker and, for an exporter that has one, its
store thread). Each store runs
``--rounds`` interleaved rounds of all four (3 by default); the summary gives the
medians, each ratio taken from figures measured side by side in one round. Then the
caller's cost: the median microseconds of one ``record()`` with the worker running,
next to the OpenTelemetry SDK's ``Logger.emit`` (``BatchLogRecordProcessor`` with a
queue as large as the trail's, a no-op exporter, the same attributes).

Targets: end-to-end >= 0.9x the raw limit on SQLite, >= 0.7x on PostgreSQL, and >= 50x
the seed's pattern; ``record()`` <= 0.3x ``Logger.emit``.

With ``--both`` the same run is repeated with ``OTEL_AUDIT_PUREPYTHON=1`` (the pure-Python
paths) and its figures printed after.

Usage: ``python benchmarks/throughput.py [--records N] [--rounds R] [--pg URL] [--quick] [--both]``
(PostgreSQL from ``--pg`` or ``OTEL_AUDIT_TEST_POSTGRES_URL``; a scratch database is
created and dropped).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from _scratch import scratch_postgres
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, registry

from otel_audit import AuditTrail, _accel
from otel_audit.exporters import sqlite as sqlite_exporter
from otel_audit.store.migrate import upgrade
from otel_audit.store.schema import ROW_COLUMNS, audit_trails
from otel_audit.store.writer import create_store_engine, store_row

copy_text: Callable[[list[tuple[Any, ...]]], bytes] | None
try:  # the raw limit's COPY text, on either path (the baseline is the same for both)
    from otel_audit._speedups import copy_text
except ImportError:  # not built
    copy_text = None

ATTRS = {
    "user_id": "alice",
    "user_email": "alice@example.com",
    "team_id": "payments",
    "resource_type": "tool",
    "client_ip": "10.0.0.1",
    "request_method": "PUT",
    "request_path": "/tools/t-1",
    "old_values": {"enabled": True, "timeout": 5},
    "new_values": {"enabled": True, "timeout": 6},
}


def fields(i: int) -> dict[str, Any]:
    return {**ATTRS, "resource_id": f"t-{i}"}


# ----------------------------------------------------------------------------- stores


@contextmanager
def sqlite_store() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{tmp}/bench.db"


def reset(url: str) -> None:
    """An empty table for the next measure. PostgreSQL truncates (a DELETE leaves dead
    rows and index entries behind, and each measure after it would write into a larger,
    slower table than the one before), then checkpoints: a measure writes a few hundred
    MB of WAL, and without it whichever measure a checkpoint the previous ones called
    for lands in pays for it (where the role may not, the measures go on without)."""
    engine = create_store_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"TRUNCATE {audit_trails.name}")
        else:
            conn.execute(audit_trails.delete())
    if engine.dialect.name == "postgresql":
        try:
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "CHECKPOINT")
        except DBAPIError as exc:
            print(f"note: no CHECKPOINT between measures ({exc.orig})", file=sys.stderr)
    engine.dispose()


# ----------------------------------------------------------------------------- measures


class Measure(NamedTuple):
    """Records/s (wall clock) and this process's CPU time per record (all its threads;
    a PostgreSQL server's own work is not in it); ``threads``: the CPU time per record
    of each of the trail's threads, where the system tells (Linux)."""

    rate: float
    cpu_us: float
    threads: dict[str, float]
    #: end to end only: the share of the wall time the caller's loop of ``record()``
    #: took, and the share of the records committed by the time it ended (the rest is
    #: the drain after it: the pipeline alone)
    overlap: tuple[float, float] | None = None


def thread_cpu_ns(native_id: int) -> int | None:
    """CPU time of one of this process's threads so far (Linux's schedstat), or None."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Clock:
    """Wall clock and process CPU time from its creation to :meth:`stop`; with
    ``threads`` (name: native thread ID), each of those threads' CPU time too."""

    def __init__(self, threads: dict[str, int] | None = None) -> None:
        self.threads = threads or {}
        self.thread_cpu = {name: thread_cpu_ns(tid) for name, tid in self.threads.items()}
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self, n: int) -> Measure:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        per_thread = {}
        for name, tid in self.threads.items():
            before, after = self.thread_cpu[name], thread_cpu_ns(tid)
            if before is not None and after is not None:
                per_thread[name] = (after - before) / 1e3 / n
        return Measure(n / wall, cpu * 1e6 / n, per_thread)


def trail_threads(trail: AuditTrail) -> dict[str, int]:
    """The calling thread and the trail's worker and store threads (those running)."""
    import threading

    names = {"otel-audit-writer": "worker", "otel-audit-store": "store"}
    found = {"caller": threading.get_native_id()}
    for thread in threading.enumerate():
        if thread.name in names and thread.native_id is not None:
            found[names[thread.name]] = thread.native_id
    return found


def overlap(measure: Measure) -> str:
    """How much of the end-to-end run the pipeline worked beside the caller."""
    if measure.overlap is None:
        return "n/a"
    loop, written = measure.overlap
    return (f"end to end: the caller's loop took {loop:.0%} of the time, {written:.0%} of the "
            f"records committed by its end; the drain after it {1 - loop:.0%}")


def by_thread(measure: Measure) -> str:
    return ", ".join(f"{name} {us:.1f}" for name, us in measure.threads.items()) or "n/a"


def started_trail(url: str, batch: int, queue_size: int) -> AuditTrail:
    """A trail on an empty table, started as the raw driver is before its timing: the
    worker running and the store's connection open (one record written and removed)."""
    reset(url)
    trail = AuditTrail(url, batch_size=batch, queue_size=queue_size)
    trail.record("READ", user_id="warm-up")
    assert trail.flush(60)
    with trail.writer.engine.begin() as conn:
        conn.execute(audit_trails.delete())
    return trail


def end_to_end(url: str, n: int, batch: int) -> Measure:
    trail = started_trail(url, batch, max(n, 65536))
    gc.collect()
    clock = Clock(trail_threads(trail))
    for i in range(n):
        trail.record("UPDATE", **fields(i))
    loop, written = time.perf_counter() - clock.wall, trail.stats().written - 1
    assert trail.flush(600)
    measure = clock.stop(n)
    assert trail.stats().written == n + 1
    trail.shutdown()
    return measure._replace(overlap=(loop * measure.rate / n, written / n))


def pipeline_alone(url: str, n: int, batch: int) -> Measure:
    """Records/s of the pipeline without the caller: records built beforehand, queued at
    once, until committed (what the end-to-end figure loses to the caller's share of
    the GIL)."""
    trail = started_trail(url, batch, max(n, 65536))
    records = [trail.build_record("UPDATE", **fields(i)) for i in range(n)]
    gc.collect()
    clock = Clock(trail_threads(trail))
    for record in records:
        trail.pipeline.submit(record)
    assert trail.flush(600)
    measure = clock.stop(n)
    assert trail.stats().written == n + 1
    trail.shutdown()
    return measure


def sealed_rows(url: str, n: int, batch: int) -> list[tuple[Any, ...]]:
    """The very rows the trail writes: redacted, normalised and sealed by its own
    pipeline (built once per store, written by every round of :func:`raw_limit`)."""
    reset(url)
    trail = AuditTrail(url, enabled=True)
    records = [trail.build_record("UPDATE", **fields(i)) for i in range(n)]
    rows = []
    for i in range(0, n, batch):
        prepared = trail.pipeline._prepare(records[i:i + batch])
        trail.pipeline._seal(prepared)
        rows += [store_row(p) for p in prepared]
    trail.shutdown()
    return rows


def raw_limit(url: str, rows: list[tuple[Any, ...]], batch: int, *, form: str = "plain",
              ) -> Measure:
    """The driver alone, batches of the trail's size, each committed; what it sends is
    made before the timing starts. ``form``:

    * ``plain``: SQLite ``executemany`` of a one-row ``INSERT`` of every column;
      PostgreSQL COPY through psycopg's ``write_row``;
    * ``trail``: what the trail sends. SQLite: its multi-row ``INSERT OR IGNORE`` (one
      statement per batch, columns NULL in every row of the batch left out, the
      parameters flattened beforehand); PostgreSQL: psycopg's ``copy.write`` of the COPY
      text the compiled encoder made beforehand.

    The table must hold every row afterwards (a statement that skipped rows would
    flatter the limit)."""
    reset(url)
    n = len(rows)
    sqlite = url.startswith("sqlite")
    cols = ", ".join(ROW_COLUMNS)
    engine = create_store_engine(url)
    chunks = [rows[i:i + batch] for i in range(0, n, batch)]
    statements: list[list[tuple[str, list[Any]]]] = []
    texts: list[bytes] = []
    if form == "trail" and sqlite:
        for chunk in chunks:
            statements.append([])
            for start in range(0, len(chunk), sqlite_exporter.ROWS_PER_STATEMENT):
                part = chunk[start:start + sqlite_exporter.ROWS_PER_STATEMENT]
                kept, params = sqlite_exporter.python_sqlite_params(part)
                statements[-1].append((sqlite_exporter._sqlite_insert(kept, len(part)), params))
    elif form == "trail":
        assert copy_text is not None
        texts = [copy_text(chunk) for chunk in chunks]
    with engine.connect() as conn:
        dbapi: Any = conn.connection.driver_connection
        if not sqlite:  # timestamps are UTC text
            dbapi.execute("SET TIME ZONE 'UTC'")
            dbapi.commit()
        gc.collect()
        clock = Clock()
        if sqlite and form == "trail":
            dbapi.isolation_level = None  # as the trail: a one-statement batch autocommits
            for statement in statements:
                if len(statement) > 1:
                    dbapi.execute("BEGIN")
                for sql, params in statement:
                    dbapi.execute(sql, params)
                if len(statement) > 1:
                    dbapi.execute("COMMIT")
        elif sqlite:
            marks = ", ".join("?" * len(ROW_COLUMNS))
            for chunk in chunks:
                dbapi.executemany(f"INSERT INTO audit_trails ({cols}) VALUES ({marks})", chunk)
                dbapi.commit()
        elif form == "trail":
            dbapi.autocommit = True
            for text in texts:
                with dbapi.cursor() as cur, cur.copy(
                        f"COPY audit_trails ({cols}) FROM STDIN") as copy:
                    copy.write(text)
        else:
            for chunk in chunks:
                with dbapi.cursor() as cur, cur.copy(
                        f"COPY audit_trails ({cols}) FROM STDIN") as copy:
                    for row in chunk:
                        copy.write_row(row)
                dbapi.commit()
        measure = clock.stop(n)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(audit_trails)).scalar_one()
    assert stored == n, f"raw {form} stored {stored} of {n} rows"
    engine.dispose()
    return measure


class SeedAuditTrail:
    """The seed's ORM model over the same table."""


registry().map_imperatively(SeedAuditTrail, audit_trails)


def seed_pattern(url: str, n: int) -> float:
    reset(url)
    # the seed's own engine: SQLAlchemy's defaults, none of the store's tuning
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        db = Session(engine)
        entry = SeedAuditTrail()
        values = {"id": uuid.uuid4().hex, "timestamp": dt.datetime.now(dt.UTC),
                  "correlation_id": uuid.uuid4().hex, "action": "UPDATE",
                  "requires_review": False, "success": True, "schema_version": 1, **fields(i)}
        for key, value in values.items():
            setattr(entry, key, value)
        db.add(entry)
        db.commit()
        db.refresh(entry)
        db.close()
    elapsed = time.perf_counter() - start
    engine.dispose()
    return n / elapsed


def median_us(call: Callable[[int], object], n: int) -> float:
    timer = time.perf_counter_ns
    samples = []
    for i in range(n):
        t0 = timer()
        call(i)
        samples.append(timer() - t0)
    return statistics.median(samples) / 1000


def caller_cost(url: str, n: int) -> tuple[float, float]:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        LogRecordExporter,
        LogRecordExportResult,
    )

    class NoopExporter(LogRecordExporter):
        def export(self, batch: Any) -> LogRecordExportResult:
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    provider = LoggerProvider()
    # a queue as large as the trail's: the SDK's default (2,048) drops records here,
    # and a drop costs less than a queued record
    provider.add_log_record_processor(BatchLogRecordProcessor(NoopExporter(),
                                                              max_queue_size=4 * n))
    logger = provider.get_logger("bench")
    otel_attrs = {"audit.action": "UPDATE", "audit.resource.type": "tool",
                  "user.id": "alice", "user.email": "alice@example.com",
                  "audit.team.id": "payments", "client.address": "10.0.0.1",
                  "http.request.method": "PUT", "url.path": "/tools/t-1",
                  "audit.old_values": '{"enabled":true,"timeout":5}',
                  "audit.new_values": '{"enabled":true,"timeout":6}'}

    reset(url)
    trail = AuditTrail(url, queue_size=4 * n)
    trail.writer.ensure_schema()
    # interleave rounds so both sides see the same machine noise
    ours, theirs = [], []
    for _ in range(5):
        gc.collect()
        ours.append(median_us(lambda i: trail.record("UPDATE", **fields(i)), n // 5))
        gc.collect()
        theirs.append(median_us(
            lambda i: logger.emit(body="audit", event_name="audit",
                                  attributes={**otel_attrs, "audit.resource.id": f"t-{i}"}),
            n // 5))
    trail.flush(600)
    trail.shutdown()
    provider.shutdown()
    return statistics.median(ours), statistics.median(theirs)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed-records", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds per store; figures and ratios are medians")
    parser.add_argument("--pg", default=os.environ.get("OTEL_AUDIT_TEST_POSTGRES_URL"))
    parser.add_argument("--quick", action="store_true", help="small sizes, smoke test")
    parser.add_argument("--both", action="store_true",
                        help="then the same run on the pure-Python paths")
    args = parser.parse_args()
    if args.quick:
        args.records, args.seed_records, args.rounds = 5_000, 300, 1

    stores: list[tuple[str, Any]] = [("sqlite", sqlite_store())]
    if args.pg:
        stores.append(("postgresql", scratch_postgres(args.pg)))
    else:
        print("postgresql: skipped (no --pg and no OTEL_AUDIT_TEST_POSTGRES_URL)")

    compiled_copy = copy_text is not None
    path = "pure Python" if _accel.pure_python or _accel.speedups is None else "compiled"
    print(f"path={path} records={args.records} batch={args.batch} seed_records={args.seed_records} "
          f"rounds={args.rounds}")
    for name, manager in stores:
        with manager as url:
            rows = sealed_rows(url, args.records, args.batch)
            plain_name = "executemany" if name == "sqlite" else "COPY write_row"
            trail_name = ("the trail's multi-row INSERT" if name == "sqlite"
                          else "COPY of the encoded text")
            rounds = []
            for r in range(args.rounds):  # interleaved: each round sees the same machine
                e2e = end_to_end(url, args.records, args.batch)
                alone = pipeline_alone(url, args.records, args.batch)
                plain = raw_limit(url, rows, args.batch)
                # the raw limit: the faster of the driver's plain use and the driver
                # sending exactly what the trail sends (made beforehand)
                ahead = (raw_limit(url, rows, args.batch, form="trail")
                         if name == "sqlite" or compiled_copy else plain)
                raw = max(plain, ahead, key=lambda m: m.rate)
                seed = seed_pattern(url, args.seed_records)
                rounds.append((e2e, alone, raw, seed, plain))
                print(f"{name:10s} round {r + 1}: end-to-end {e2e.rate:,.0f} | pipeline alone "
                      f"{alone.rate:,.0f} | raw {raw.rate:,.0f} ({plain_name} {plain.rate:,.0f}, "
                      f"{trail_name} {ahead.rate:,.0f}) | seed {seed:,.0f} rec/s | "
                      f"e2e/raw {e2e.rate / raw.rate:.2f}x, e2e/seed {e2e.rate / seed:.0f}x | "
                      f"CPU us/rec e2e {e2e.cpu_us:.1f}, raw {raw.cpu_us:.1f}")
                print(f"{name:10s} round {r + 1}: CPU us/rec by thread: end-to-end "
                      f"{by_thread(e2e)} | pipeline alone {by_thread(alone)}")
                print(f"{name:10s} round {r + 1}: {overlap(e2e)}")

            def med(values: Iterator[float]) -> float:
                return statistics.median(values)

            e2e_rate = med(e.rate for e, *_ in rounds)
            raw_rate = med(r.rate for _, _, r, _, _ in rounds)
            seed = med(s for *_, s, _ in rounds)
            # each ratio from figures measured side by side in one round; the median round
            e2e_ratio = med(e.rate / r.rate for e, _, r, _, _ in rounds)
            plain_ratio = med(e.rate / p.rate for e, *_, p in rounds)
            seed_ratio = med(e.rate / s for e, _, _, s, _ in rounds)
            alone_ratio = med(a.rate / r.rate for _, a, r, _, _ in rounds)
            cpu_ratio = med(r.cpu_us / e.cpu_us for e, _, r, _, _ in rounds)
            print(f"{name:10s} end-to-end {e2e_rate:10,.0f} rec/s | raw limit "
                  f"{raw_rate:10,.0f} rec/s | seed pattern {seed:8,.0f} rec/s")
            target = 0.9 if name == "sqlite" else 0.7
            print(f"{name:10s} end-to-end / raw = {e2e_ratio:.2f}x (target >= {target:.2f}) "
                  f"{'OK' if e2e_ratio >= target else 'MISS'} | end-to-end / {plain_name} = "
                  f"{plain_ratio:.2f}x | end-to-end / seed = {seed_ratio:.0f}x (target >= 50) "
                  f"{'OK' if seed_ratio >= 50 else 'MISS'}")
            print(f"{name:10s} pipeline alone (records built beforehand) "
                  f"{med(a.rate for _, a, *_ in rounds):10,.0f} rec/s = {alone_ratio:.2f}x raw")
            print(f"{name:10s} this process's CPU per record: end-to-end "
                  f"{med(e.cpu_us for e, *_ in rounds):.1f} us, raw "
                  f"{med(r.cpu_us for _, _, r, _, _ in rounds):.1f} us (raw/e2e {cpu_ratio:.2f}x"
                  f"{'; the server works apart' if name != 'sqlite' else ''})")
            median_e2e = sorted((e for e, *_ in rounds), key=lambda m: m.rate)[len(rounds) // 2]
            print(f"{name:10s} {overlap(median_e2e)} (the median round)")
            thread_names = {t for e, *_ in rounds for t in e.threads}
            if thread_names:
                print(f"{name:10s} CPU per record by thread, end-to-end: " + ", ".join(
                    f"{t} {med(e.threads.get(t, 0.0) for e, *_ in rounds):.1f} us"
                    for t in sorted(thread_names)))
    with sqlite_store() as url:
        ours, theirs = caller_cost(url, min(args.records, 50_000))
    ratio = ours / theirs
    print(f"caller     record() median {ours:.2f} us | OTel Logger.emit median {theirs:.2f} us | "
          f"ratio {ratio:.2f}x (target <= 0.30) {'OK' if ratio <= 0.3 else 'MISS'}")
    if args.both and not _accel.pure_python:  # the same run on the pure-Python paths
        import subprocess

        print(f"--- the same run with {_accel.PURE_PYTHON_ENV}=1", flush=True)
        argv = [a for a in sys.argv[1:] if a != "--both"]
        subprocess.run([sys.executable, __file__, *argv], check=False,
                       env={**os.environ, _accel.PURE_PYTHON_ENV: "1"})


if __name__ == "__main__":
    main()
