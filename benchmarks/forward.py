"""Forwarding throughput next to the in-process write rate of the same records.

* in-process: ``trail.record(...)`` N times, then ``trail.flush()`` into store A —
  records/s until everything is committed;
* forward -> file: ``Forwarder`` reads A after its cursor and writes JSON lines
  (``fsync`` per batch) — records/s until the cursor stands at the head;
* forward -> serve: ``otel-audit serve`` in its own process on store B (``--ack-mode
  sync``: acknowledged once committed in B); ``Forwarder`` sends A over OTLP/HTTP
  (protobuf, gzip) — records/s until B holds all N (the cursor moved with each
  acknowledgement); once with one batch in flight (strict order), once with
  ``--parallel`` batches in flight (``Forwarder(parallel=...)``).

Target: forward -> serve >= 0.5x in-process. The best of ``--rounds`` rounds is given.
Next to each rate, the CPU time spent per record (best round; in-process: this process,
both threads; forward -> file: the forwarder; forward -> serve: the forwarder and the
``otel-audit serve`` process together): on a shared machine it moves far less than
the rates, and it says what forwarding costs beside what it takes in wall time (the
forwarder and the receiver run on two cores at once, the in-process path mostly on one).

Every figure is for one store kind: both trails (the forwarded one and the receiver's)
on SQLite files, then, with ``--postgres URL`` (default ``OTEL_AUDIT_BENCH_POSTGRES_URL``),
both in scratch databases on that PostgreSQL server (created and dropped).

Usage: ``python benchmarks/forward.py [--records N] [--rounds R] [--batch-size B]
[--parallel P] [--postgres URL] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

from _scratch import scratch_postgres
from sqlalchemy import func, select

from otel_audit import AuditTrail, _accel
from otel_audit.forward import FileDestination, Forwarder, parse_destination
from otel_audit.store.schema import audit_trails
from otel_audit.store.writer import create_store_engine

OTEL_AUDIT = Path(sys.executable).with_name("otel-audit")
ACK_MODE = "sync"


def _count(url: str) -> int:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_trails)).scalar_one())
    finally:
        engine.dispose()


class Rate(NamedTuple):
    """records/s, and CPU microseconds per record (``None`` where it cannot be read)."""

    per_second: float
    cpu_us: float | None


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) of process ``pid`` (Linux ``/proc``), else ``None``."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_process(url: str, n: int) -> Rate:
    """records/s of ``trail.record()`` until committed."""
    trail = AuditTrail(url, service_name="bench", auto_migrate=True)
    cpu = time.process_time()
    start = time.perf_counter()
    for i in range(n):
        trail.record("UPDATE", user_id=f"user-{i % 50}", resource_type="tool",
                     resource_id=f"t-{i}", old_values={"enabled": True, "timeout": 5},
                     new_values={"enabled": True, "timeout": 6})
    trail.flush(600)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    trail.shutdown()
    return Rate(n / elapsed, cpu / n * 1e6)


def forward_rate(source: str, destination: object, n: int, batch_size: int,
                 parallel: int = 1, receiver: int | None = None) -> Rate:
    """records/s of one ``Forwarder.run(once=True)`` of the whole trail; the CPU time
    counts the process ``receiver`` too, when given."""
    engine = create_store_engine(source)
    try:
        forwarder = Forwarder(engine, destination, batch_size=batch_size,  # type: ignore[arg-type]
                              parallel=parallel)
        forwarder.start_from(from_start=True)
        other = _cpu_seconds(receiver)
        cpu = time.process_time()
        start = time.perf_counter()
        summary = forwarder.run(once=True)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if receiver is not None:
            after = _cpu_seconds(receiver)
            cpu = cpu + after - other if after is not None and other is not None else None
    finally:
        engine.dispose()
    assert summary.sent == n, f"forwarded {summary.sent} of {n}"
    return Rate(n / elapsed, None if cpu is None else cpu / n * 1e6)


@contextmanager
def serve(url: str) -> Iterator[tuple[str, int]]:
    """Run ``otel-audit serve --ack-mode sync`` in its own process; yields its base URL
    and process ID."""
    proc = subprocess.Popen([str(OTEL_AUDIT), "serve", "--db", url, "--port", "0",
                             "--ack-mode", ACK_MODE], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    base = None
    for line in proc.stderr:
        match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
        if match:
            base = match.group(1)
            break
    if base is None:
        proc.kill()
        raise RuntimeError("otel-audit serve did not start")
    try:
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)


def main() -> None:
    """Print records/s of each path and the ratios to the in-process rate."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="5,000 records, one round")
    parser.add_argument("--postgres", default=os.environ.get("OTEL_AUDIT_BENCH_POSTGRES_URL"),
                        help="also run on PostgreSQL (scratch databases on this server)")
    args = parser.parse_args()
    n, rounds = (5_000, 1) if args.quick else (args.records, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        run_store("SQLite", lambda name: _sqlite_store(tmp, name), n, rounds,
                  args.batch_size, args.parallel)
    if args.postgres:
        run_store("PostgreSQL", lambda _name: scratch_postgres(args.postgres), n, rounds,
                  args.batch_size, args.parallel)


@contextmanager
def _sqlite_store(directory: str, name: str) -> Iterator[str]:
    yield f"sqlite:///{directory}/{name}.db"


def run_store(kind: str, stores: Callable[[str], AbstractContextManager[str]], n: int,
              rounds: int, batch_size: int, parallel: int) -> None:
    """Every path ``rounds`` times on stores of one kind (``stores(name)`` makes one)."""
    runs: dict[str, list[Rate]] = {"in-process": [], "file": [], "serve": [],
                                   "serve-parallel": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            with ExitStack() as stack:
                source = stack.enter_context(stores(f"a{r}"))
                runs["in-process"].append(in_process(source, n))
                out = Path(tmp, f"out{r}.jsonl")
                runs["file"].append(forward_rate(
                    source, FileDestination(out, max_bytes=1 << 40), n, batch_size))
                for name, width in (("serve", 1), ("serve-parallel", parallel)):
                    receiver = stack.enter_context(stores(f"{name}{r}"))
                    with serve(receiver) as (base, pid):
                        destination = parse_destination(base.replace("http://",
                                                                     "otlp+http://"))
                        runs[name].append(forward_rate(source, destination, n, batch_size,
                                                       width, receiver=pid))
                        destination.close()
                    assert _count(receiver) == n, "the receiver is missing records"
    best = {name: max(rate.per_second for rate in rates) for name, rates in runs.items()}
    cpu = {name: min((rate.cpu_us for rate in rates if rate.cpu_us is not None),
                     default=None) for name, rates in runs.items()}
    base_rate, base_cpu = best["in-process"], cpu["in-process"]
    compiled = "pure Python" if _accel.speedups is None else "compiled"
    print(f"{n} records, {kind}, best of {rounds}, batches of {batch_size}, {compiled}")
    for name, label in (("in-process", "in-process record()+flush    "),
                        ("file", "forward -> file (JSON lines) "),
                        ("serve", "forward -> otel-audit serve  "),
                        ("serve-parallel", f"  ... --parallel {parallel}         ")):
        line = f"{label}  {best[name]:10,.0f} records/s  {best[name] / base_rate:5.2f}x"
        us = cpu[name]
        if us is not None and base_cpu:
            line += f"   CPU {us:6.1f} us/record  {us / base_cpu:5.2f}x"
        print(line)


if __name__ == "__main__":
    main()
