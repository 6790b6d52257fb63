"""Caller-side cost of the capture paths, measured side by side in one run.

* logging: ``logger.info(..., extra={"audit": {...}})`` through :class:`AuditLogHandler`
  versus the same call through the OpenTelemetry SDK's (deprecated) ``LoggingHandler``
  with a ``BatchLogRecordProcessor`` and a no-op exporter. Target: <= 0.6x.
* spans: a span carrying audit attributes through :class:`AuditSpanProcessor` versus
  the same span with a no-op processor. Target: <= 3 microseconds more.
* record: ``trail.record(...)`` (the call snapshots its values) versus the OpenTelemetry
  SDK's ``Logger.emit`` with the same attributes (``BatchLogRecordProcessor`` with a
  queue as large as the trail's, no-op exporter), outside any span and inside a
  recording span (where ``record()`` also adds an ``audit`` event). Target: <= 0.3x.

Median microseconds per call (``time.perf_counter_ns`` around each call), with the
trail's worker writing to SQLite in the background as it would in production. The two
sides run in alternating rounds so machine noise hits both alike.

Usage: ``python benchmarks/capture.py [--calls N] [--rounds R] [--quick]``
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from otel_audit import AuditLogHandler, AuditTrail
from otel_audit.otel import AuditSpanProcessor

AUDIT = {
    "action": "UPDATE",
    "resource_type": "tool",
    "resource_id": "t-1",
    "user_id": "alice",
    "old_values": {"enabled": True, "timeout": 5},
    "new_values": {"enabled": True, "timeout": 6},
}

SPAN_ATTRS = {
    "audit.action": "UPDATE",
    "audit.resource.type": "tool",
    "audit.resource.id": "t-1",
    "audit.old_values": '{"enabled":true,"timeout":5}',
    "audit.new_values": '{"enabled":true,"timeout":6}',
    "user.id": "alice",
    "http.request.method": "PUT",
    "url.path": "/tools/t-1",
}


class _NoOpLogExporter(LogRecordExporter):
    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _NoOpSpanProcessor(SpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        pass


def _per_call_us(call: Callable[[], Any], n: int) -> list[float]:
    clock = time.perf_counter_ns
    out = []
    gc.disable()
    try:
        for _ in range(n):
            t0 = clock()
            call()
            out.append((clock() - t0) / 1000)
    finally:
        gc.enable()
    return out


def _compare(name: str, a: Callable[[], Any], b: Callable[[], Any], n: int,
             rounds: int, settle: Callable[[], Any]) -> tuple[float, float]:
    """Alternate rounds of ``a`` and ``b``; return the medians over all calls."""
    samples_a: list[float] = []
    samples_b: list[float] = []
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        samples_a += _per_call_us(a, per_round)
        settle()
        samples_b += _per_call_us(b, per_round)
        settle()
    return statistics.median(samples_a), statistics.median(samples_b)


def bench_logging(trail: AuditTrail, n: int, rounds: int) -> tuple[float, float]:
    """Median µs: AuditLogHandler vs the SDK's LoggingHandler + batch processor."""
    audit_logger = logging.getLogger("bench.audit")
    audit_logger.propagate = False
    audit_logger.setLevel(logging.INFO)
    audit_logger.addHandler(AuditLogHandler(trail=trail))

    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(_NoOpLogExporter()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sdk_handler = LoggingHandler(logger_provider=provider)
    sdk_logger = logging.getLogger("bench.sdk")
    sdk_logger.propagate = False
    sdk_logger.setLevel(logging.INFO)
    sdk_logger.addHandler(sdk_handler)

    extra = {"audit": AUDIT}

    def ours() -> None:
        audit_logger.info("tool %s updated", "t-1", extra=extra)

    def theirs() -> None:
        sdk_logger.info("tool %s updated", "t-1", extra=extra)

    def settle() -> None:
        trail.flush()
        provider.force_flush()

    result = _compare("logging", ours, theirs, n, rounds, settle)
    provider.shutdown()
    return result


def bench_spans(trail: AuditTrail, n: int, rounds: int) -> tuple[float, float]:
    """Median µs: an audit span through AuditSpanProcessor vs a no-op processor."""
    audited = TracerProvider()
    audited.add_span_processor(AuditSpanProcessor(trail))
    plain = TracerProvider()
    plain.add_span_processor(_NoOpSpanProcessor())
    t_audited = audited.get_tracer("bench")
    t_plain = plain.get_tracer("bench")

    def ours() -> None:
        with t_audited.start_as_current_span("update tool", attributes=SPAN_ATTRS):
            pass

    def theirs() -> None:
        with t_plain.start_as_current_span("update tool", attributes=SPAN_ATTRS):
            pass

    result = _compare("spans", ours, theirs, n, rounds, trail.flush)
    audited.shutdown()
    plain.shutdown()
    return result


RECORD_FIELDS: dict[str, Any] = {
    "resource_type": "tool", "resource_id": "t-1", "user_id": "alice",
    "user_email": "alice@example.com", "team_id": "payments", "client_ip": "10.0.0.1",
    "request_method": "PUT", "request_path": "/tools/t-1",
    "old_values": {"enabled": True, "timeout": 5},
    "new_values": {"enabled": True, "timeout": 6},
}

EMIT_ATTRS = {
    "audit.action": "UPDATE", "audit.resource.type": "tool", "audit.resource.id": "t-1",
    "user.id": "alice", "user.email": "alice@example.com", "audit.team.id": "payments",
    "client.address": "10.0.0.1", "http.request.method": "PUT", "url.path": "/tools/t-1",
    "audit.old_values": '{"enabled":true,"timeout":5}',
    "audit.new_values": '{"enabled":true,"timeout":6}',
}


def bench_record(trail: AuditTrail, n: int, rounds: int, *,
                 in_span: bool) -> tuple[float, float]:
    """Median µs: ``trail.record()`` vs the SDK's ``Logger.emit``, optionally inside one
    recording span (opened outside the timed calls)."""
    provider = LoggerProvider()
    # a queue as large as the calls: the SDK's default (2,048) drops records here, and a
    # drop costs less than a queued record
    provider.add_log_record_processor(BatchLogRecordProcessor(_NoOpLogExporter(),
                                                              max_queue_size=4 * n))
    logger = provider.get_logger("bench")
    fields = RECORD_FIELDS

    def ours() -> None:
        trail.record("UPDATE", **fields)

    def theirs() -> None:
        logger.emit(body="audit", event_name="audit", attributes=EMIT_ATTRS)

    def settle() -> None:
        trail.flush()
        provider.force_flush()

    if in_span:
        tracer = TracerProvider().get_tracer("bench")
        # one span for the whole run: the events it collects are capped by its limits
        with tracer.start_as_current_span("request"):
            result = _compare("record in span", ours, theirs, n, rounds, settle)
    else:
        result = _compare("record", ours, theirs, n, rounds, settle)
    provider.shutdown()
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Run both comparisons and print absolute figures, ratios and targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000, help="calls per side")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    calls, rounds = (2_000, 2) if args.quick else (args.calls, args.rounds)

    with tempfile.TemporaryDirectory() as tmp:
        trail = AuditTrail(f"sqlite:///{tmp}/capture.db", service_name="bench")
        try:
            ours, sdk = bench_logging(trail, calls, rounds)
            print(f"logging  AuditLogHandler {ours:7.2f} us/call   "
                  f"SDK LoggingHandler+Batch {sdk:7.2f} us/call   "
                  f"ratio {ours / sdk:.2f}x (target <= 0.6x)  "
                  f"{'OK' if ours / sdk <= 0.6 else 'MISSED'}")
            ours, plain = bench_spans(trail, calls, rounds)
            print(f"spans    AuditSpanProcessor {ours:7.2f} us/span   "
                  f"no-op processor {plain:7.2f} us/span   "
                  f"extra {ours - plain:+.2f} us (target <= +3.00 us)  "
                  f"{'OK' if ours - plain <= 3.0 else 'MISSED'}")
            for in_span, label in ((False, "record  "), (True, "in span ")):
                ours, theirs = bench_record(trail, calls, rounds, in_span=in_span)
                print(f"{label} record() {ours:7.2f} us/call   "
                      f"SDK Logger.emit {theirs:7.2f} us/call   "
                      f"ratio {ours / theirs:.2f}x (target <= 0.3x)  "
                      f"{'OK' if ours / theirs <= 0.3 else 'MISSED'}")
            trail.flush()
            stats = trail.stats()
            print(f"trail    written {stats.written}  dropped {stats.dropped}  "
                  f"failed {stats.failed}")
        finally:
            trail.shutdown()


if __name__ == "__main__":
    main()
