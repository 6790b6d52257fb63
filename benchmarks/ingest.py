"""End-to-end OTLP ingest throughput next to the in-process ``record()`` path.

For each store (a fresh SQLite file; PostgreSQL when a URL is given) and each
acknowledgement mode of ``otel-audit serve``:

* in-process: ``trail.record(...)`` N times, then ``trail.flush()`` — records/s until
  everything is committed;
* ingest: ``otel-audit serve`` in its own process; this process sends the same N audit
  log records (made by a real ``LoggerProvider`` inside real spans, before the clock
  starts) with the official ``OTLPLogExporter`` (protobuf, gzip) in batches of 512 from
  ``--clients`` threads, then waits until the store holds all N — records/s end to end.

Target: ingest >= 0.5x in-process. The two paths run in alternating rounds so machine
noise hits both alike; the best round of each is reported.

``--stalled S`` keeps S more connections open during every ingest run, each having sent
its headers and one byte of its body, then nothing (slow or malicious clients); the
line then also gives the count of 503 answers to the exporters (``unavailable`` less
``body_timeouts`` on ``/healthz``), which should stay 0: a stalled body holds no writer
slot.

Usage: ``python benchmarks/ingest.py [--records N] [--rounds R] [--clients C]
[--stalled S] [--postgres URL] [--quick]`` (``--postgres`` defaults to
``OTEL_AUDIT_BENCH_POSTGRES_URL``; a scratch database is created on that server and
dropped afterwards).

Latest figures and what they mean: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from _scratch import scratch_postgres
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, select

from otel_audit import AuditTrail
from otel_audit.config import MODES
from otel_audit.store.migrate import upgrade
from otel_audit.store.schema import audit_trails
from otel_audit.store.writer import create_store_engine

BATCH = 512
OTEL_AUDIT = Path(sys.executable).with_name("otel-audit")


def make_log_records(n: int) -> list[ReadableLogRecord]:
    """``n`` audit log records emitted inside real spans (built before timing)."""
    resource = Resource.create({"service.name": "bench"})
    tracer = TracerProvider(resource=resource).get_tracer("bench")
    sink = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(SimpleLogRecordProcessor(sink))
    logger = provider.get_logger("bench")
    for i in range(n):
        with tracer.start_as_current_span("request"):
            logger.emit(event_name="audit", attributes={
                "audit.action": "UPDATE", "user.id": f"user-{i % 50}",
                "audit.resource.type": "tool", "audit.resource.id": f"t-{i}",
                "audit.old_values": '{"enabled":true,"timeout":5}',
                "audit.new_values": '{"enabled":true,"timeout":6}',
            })
    records = list(sink.get_finished_logs())
    provider.shutdown()
    return records


def _count(url: str) -> int:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(audit_trails)) or 0)
    finally:
        engine.dispose()


def _truncate(url: str) -> None:
    engine = create_store_engine(url)
    with engine.begin() as conn:
        conn.execute(audit_trails.delete())
    engine.dispose()


def in_process(url: str, n: int) -> float:
    """records/s of ``trail.record()`` until committed."""
    _truncate(url)
    trail = AuditTrail(url, service_name="bench", auto_migrate=True)
    start = time.perf_counter()
    for i in range(n):
        trail.record("UPDATE", user_id=f"user-{i % 50}", resource_type="tool",
                     resource_id=f"t-{i}", old_values={"enabled": True, "timeout": 5},
                     new_values={"enabled": True, "timeout": 6})
    trail.flush(600)
    elapsed = time.perf_counter() - start
    trail.shutdown()
    assert _count(url) == n, "in-process path lost records"
    return n / elapsed


@contextmanager
def serve(url: str, ack_mode: str) -> Iterator[str]:
    """Run ``otel-audit serve`` in its own process; yields the logs endpoint."""
    proc = subprocess.Popen(
        [str(OTEL_AUDIT), "serve", "--db", url, "--port", "0", "--ack-mode", ack_mode,
         "--max-inflight", "16"],
        stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    endpoint = None
    for line in proc.stderr:
        match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
        if match:
            endpoint = f"{match.group(1)}/v1/logs"
            break
    if endpoint is None:
        proc.kill()
        raise RuntimeError("otel-audit serve did not start")
    try:
        yield endpoint
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)


def _stall(endpoint: str) -> socket.socket:
    """A connection that sends a request's headers and one byte of its body, then stops."""
    parts = urlsplit(endpoint)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.sendall(b"POST /v1/logs HTTP/1.1\r\nHost: bench\r\n"
                 b"Content-Type: application/x-protobuf\r\n"
                 b"Content-Length: 1000000\r\n\r\n\x0a")
    return sock


def _unavailable(endpoint: str) -> int:
    """The server's count of 503 answers so far, except to the stalled bodies themselves."""
    health = endpoint.rsplit("/v1/logs", 1)[0] + "/healthz"
    with urllib.request.urlopen(health, timeout=30) as response:
        counters = json.load(response)
    return int(counters["unavailable"]) - int(counters.get("body_timeouts", 0))


def ingest(url: str, records: Sequence[ReadableLogRecord], ack_mode: str,
           clients: int, stalled: int = 0) -> tuple[float, int]:
    """(records/s from the first export until the store holds every record, 503 answers)."""
    _truncate(url)
    batches = [records[i:i + BATCH] for i in range(0, len(records), BATCH)]
    failures: list[LogRecordExportResult] = []
    with serve(url, ack_mode) as endpoint, ExitStack() as stalls:
        exporters = [OTLPLogExporter(endpoint=endpoint, compression=Compression.Gzip,
                                     timeout=120) for _ in range(clients)]
        # warm the connection and the server; the same record is sent again later and,
        # its ID being derived from its content, stored once
        exporters[0].export(batches[0][:1])
        for _ in range(stalled):
            stalls.enter_context(_stall(endpoint))

        def send(worker: int) -> None:
            for batch in batches[worker::clients]:
                result = exporters[worker].export(batch)
                if result is not LogRecordExportResult.SUCCESS:
                    failures.append(result)

        threads = [threading.Thread(target=send, args=(w,)) for w in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # durable acknowledgement: the journal has them; wait for the store to catch up
        while _count(url) < len(records) and not failures:
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        unavailable = _unavailable(endpoint)
        for exporter in exporters:
            exporter.shutdown()
        stalls.close()  # before the server's graceful shutdown waits for them
    if failures:
        raise RuntimeError(f"{len(failures)} exports failed")
    assert _count(url) == len(records), "ingest path lost records"
    return len(records) / elapsed, unavailable


def run_store(label: str, url: str, records: Sequence[ReadableLogRecord], rounds: int,
              clients: int, ack_modes: Sequence[str], stalled: int = 0) -> None:
    """Alternate the paths for ``rounds`` rounds and print the best of each."""
    best: dict[str, float] = {}
    refused: dict[str, int] = {}
    for _ in range(rounds):
        best["record()"] = max(best.get("record()", 0.0), in_process(url, len(records)))
        for mode in ack_modes:
            key = f"serve ack={mode}"
            rate, unavailable = ingest(url, records, mode, clients, stalled)
            best[key] = max(best.get(key, 0.0), rate)
            refused[key] = refused.get(key, 0) + unavailable
    base = best["record()"]
    for key, rate in best.items():
        ratio = "" if key == "record()" else f"  ratio {rate / base:.2f}x (target >= 0.5x)"
        if stalled and key in refused:
            ratio += f"  with {stalled} stalled clients: {refused[key]} answers 503"
        print(f"{label:<10} {key:<18} {rate:>10,.0f} records/s{ratio}", flush=True)


def main() -> None:
    """Parse arguments and run every store."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=100 * BATCH)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4,
                        help="exporter threads sending at once (default: the gateway's "
                             "sending_queue.num_consumers)")
    parser.add_argument("--stalled", type=int, default=0,
                        help="connections that stall in their request body during each "
                             "ingest run (slow or malicious clients)")
    parser.add_argument("--postgres", default=os.environ.get("OTEL_AUDIT_BENCH_POSTGRES_URL"))
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.records, args.rounds = 4 * BATCH, 1
    ack_modes = ["sync", "durable"] if "durable" in MODES else ["sync"]
    records = make_log_records(args.records)
    print(f"{args.records:,} records, batches of {BATCH}, {args.clients} exporter thread(s), "
          f"best of {args.rounds} round(s)"
          + (f", {args.stalled} stalled connections" if args.stalled else ""), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        engine = create_store_engine(url)
        upgrade(engine)
        engine.dispose()
        run_store("sqlite", url, records, args.rounds, args.clients, ack_modes, args.stalled)
    if args.postgres:
        with scratch_postgres(args.postgres) as url:
            run_store("postgresql", url, records, args.rounds, args.clients, ack_modes,
                      args.stalled)
    else:
        print("postgresql skipped (pass --postgres URL or set OTEL_AUDIT_BENCH_POSTGRES_URL)")


if __name__ == "__main__":
    main()
