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

Usage: ``python benchmarks/forward.py [--records N] [--rounds R] [--batch-size B]
[--parallel P] [--quick]``.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select

from otel_audit import AuditTrail
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


def in_process(url: str, n: int) -> float:
    """records/s of ``trail.record()`` until committed."""
    trail = AuditTrail(url, service_name="bench", auto_migrate=True)
    start = time.perf_counter()
    for i in range(n):
        trail.record("UPDATE", user_id=f"user-{i % 50}", resource_type="tool",
                     resource_id=f"t-{i}", old_values={"enabled": True, "timeout": 5},
                     new_values={"enabled": True, "timeout": 6})
    trail.flush(600)
    elapsed = time.perf_counter() - start
    trail.shutdown()
    return n / elapsed


def forward_rate(source: str, destination: object, n: int, batch_size: int,
                 parallel: int = 1) -> float:
    """records/s of one ``Forwarder.run(once=True)`` of the whole trail."""
    engine = create_store_engine(source)
    try:
        forwarder = Forwarder(engine, destination, batch_size=batch_size,  # type: ignore[arg-type]
                              parallel=parallel)
        forwarder.start_from(from_start=True)
        start = time.perf_counter()
        summary = forwarder.run(once=True)
        elapsed = time.perf_counter() - start
    finally:
        engine.dispose()
    assert summary.sent == n, f"forwarded {summary.sent} of {n}"
    return n / elapsed


@contextmanager
def serve(url: str) -> Iterator[str]:
    """Run ``otel-audit serve --ack-mode sync`` in its own process; yields its base URL."""
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
        yield base
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
    args = parser.parse_args()
    n, rounds = (5_000, 1) if args.quick else (args.records, args.rounds)
    best = {"in-process": 0.0, "file": 0.0, "serve": 0.0, "serve-parallel": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            source = f"sqlite:///{tmp}/a{r}.db"
            best["in-process"] = max(best["in-process"], in_process(source, n))
            out = Path(tmp, f"out{r}.jsonl")
            best["file"] = max(best["file"], forward_rate(
                source, FileDestination(out, max_bytes=1 << 40), n, args.batch_size))
            receiver = f"sqlite:///{tmp}/b{r}.db"
            with serve(receiver) as base:
                destination = parse_destination(base.replace("http://", "otlp+http://"))
                best["serve"] = max(best["serve"], forward_rate(
                    source, destination, n, args.batch_size))
                destination.close()
            assert _count(receiver) == n, "the receiver is missing records"
            receiver = f"sqlite:///{tmp}/c{r}.db"
            with serve(receiver) as base:
                destination = parse_destination(base.replace("http://", "otlp+http://"))
                best["serve-parallel"] = max(best["serve-parallel"], forward_rate(
                    source, destination, n, args.batch_size, args.parallel))
                destination.close()
            assert _count(receiver) == n, "the receiver is missing records"
    base_rate = best["in-process"]
    print(f"{n} records, SQLite, best of {rounds}, batches of {args.batch_size}")
    print(f"in-process record()+flush     {base_rate:10,.0f} records/s")
    for name, label in (("file", "forward -> file (JSON lines)"),
                        ("serve", "forward -> otel-audit serve "),
                        ("serve-parallel", f"  ... --parallel {args.parallel}       ")):
        print(f"{label}  {best[name]:10,.0f} records/s  {best[name] / base_rate:5.2f}x "
              f"in-process")


if __name__ == "__main__":
    main()
