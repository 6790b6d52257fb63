"""Caller-side cost of the capture paths, measured side by side in one run.

* logging: ``AuditLogHandler`` vs the OpenTelemetry SDK's ``LoggingHandler`` with a
  ``BatchLogRecordProcessor`` and a no-op exporter (target <= 0.6x).
* spans: a span with audit attributes through ``AuditSpanProcessor`` vs a no-op
  processor (target <= 3 microseconds more).
* record: ``trail.record(...)`` vs the SDK's ``Logger.emit`` of the same attributes
  (``BatchLogRecordProcessor``, no-op exporter), outside any span and inside a recording
  span, median and p99 per call (target <= 0.3x inside a span), for each
  ``span_backlink`` mode; the first record of a fresh span (which pays the back-link
  event); and the amortized cost per record of a loop of calls until everything is
  flushed, worker included.

What each figure means, how it is taken and the latest results: docs/performance.md.

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

from otel_audit import AuditLogHandler, AuditTrail, _accel
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


def _samples(name: str, a: Callable[[], Any], b: Callable[[], Any], n: int,
             rounds: int, settle: Callable[[], Any]) -> tuple[list[float], list[float]]:
    """Alternate rounds of ``a`` and ``b`` (machine noise hits both alike); return the
    microseconds of every call of each."""
    samples_a: list[float] = []
    samples_b: list[float] = []
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        samples_a += _per_call_us(a, per_round)
        settle()
        samples_b += _per_call_us(b, per_round)
        settle()
    return samples_a, samples_b


def _compare(name: str, a: Callable[[], Any], b: Callable[[], Any], n: int,
             rounds: int, settle: Callable[[], Any]) -> tuple[float, float]:
    """:func:`_samples`, reduced to the two medians."""
    samples_a, samples_b = _samples(name, a, b, n, rounds, settle)
    return statistics.median(samples_a), statistics.median(samples_b)


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


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


def _emit_provider(n: int) -> LoggerProvider:
    provider = LoggerProvider()
    # a queue as large as the calls: the SDK's default (2,048) drops records here, and a
    # drop costs less than a queued record
    provider.add_log_record_processor(BatchLogRecordProcessor(_NoOpLogExporter(),
                                                              max_queue_size=4 * n))
    return provider


def _calls(trail: AuditTrail, provider: LoggerProvider
           ) -> tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]]:
    """``record()``, the SDK's ``emit`` of the same attributes, and a settle step."""
    logger = provider.get_logger("bench")
    fields = RECORD_FIELDS

    def ours() -> None:
        trail.record("UPDATE", **fields)

    def theirs() -> None:
        logger.emit(body="audit", event_name="audit", attributes=EMIT_ATTRS)

    def settle() -> None:
        trail.flush()
        provider.force_flush()

    return ours, theirs, settle


def bench_record(trail: AuditTrail, n: int, rounds: int, *,
                 in_span: bool) -> tuple[list[float], list[float]]:
    """Microseconds of every ``trail.record()`` and ``Logger.emit`` call, optionally
    inside one recording span (opened outside the timed calls, as a request's span
    holding many records)."""
    provider = _emit_provider(n)
    ours, theirs, settle = _calls(trail, provider)
    if in_span:
        tracer = TracerProvider().get_tracer("bench")
        with tracer.start_as_current_span("request"):
            result = _samples("record in span", ours, theirs, n, rounds, settle)
    else:
        result = _samples("record", ours, theirs, n, rounds, settle)
    provider.shutdown()
    return result


def bench_first_in_span(trail: AuditTrail, n: int) -> tuple[float, float]:
    """Median µs of the first ``record()`` / ``emit`` in a fresh recording span: the
    call that pays the ``first`` back-link event (spans opened outside the timing)."""
    provider = _emit_provider(n)
    ours, theirs, settle = _calls(trail, provider)
    tracer = TracerProvider().get_tracer("bench")
    clock = time.perf_counter_ns
    samples: tuple[list[float], list[float]] = ([], [])
    gc.disable()
    try:
        for i in range(n):
            for call, out in ((ours, samples[0]), (theirs, samples[1])):
                with tracer.start_as_current_span("request"):
                    t0 = clock()
                    call()
                    out.append((clock() - t0) / 1000)
            if i % 2048 == 2047:
                settle()
    finally:
        gc.enable()
    settle()
    provider.shutdown()
    return statistics.median(samples[0]), statistics.median(samples[1])


def bench_amortized(trail: AuditTrail, n: int, rounds: int, *,
                    in_span: bool) -> tuple[float, float, float, float]:
    """µs per record of ``n`` calls and the flush that commits (exports) them all, the
    worker's share included: wall clock, and the process's CPU time (all its threads;
    what other jobs on a shared machine take does not count there); medians of
    ``rounds`` alternating rounds: ``(ours, theirs, our CPU, their CPU)``."""
    provider = _emit_provider(n)
    ours, theirs, settle = _calls(trail, provider)
    clock = time.perf_counter_ns
    cpu = time.process_time_ns
    per_record: tuple[list[float], list[float]] = ([], [])
    cpu_per_record: tuple[list[float], list[float]] = ([], [])

    def run() -> None:
        for _ in range(rounds):
            for call, flush, out, cpu_out in (
                    (ours, trail.flush, per_record[0], cpu_per_record[0]),
                    (theirs, provider.force_flush, per_record[1], cpu_per_record[1])):
                settle()
                c0, t0 = cpu(), clock()
                for _ in range(n):
                    call()
                flush()
                out.append((clock() - t0) / 1000 / n)
                cpu_out.append((cpu() - c0) / 1000 / n)

    if in_span:
        with TracerProvider().get_tracer("bench").start_as_current_span("request"):
            run()
    else:
        run()
    provider.shutdown()
    return (statistics.median(per_record[0]), statistics.median(per_record[1]),
            statistics.median(cpu_per_record[0]), statistics.median(cpu_per_record[1]))


def _verdict(ratio: float, target: float) -> str:
    return f"(target <= {target}x)  {'OK' if ratio <= target else 'MISSED'}"


def main(argv: Sequence[str] | None = None) -> None:
    """Run every comparison and print absolute figures, ratios and targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000, help="calls per side")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    calls, rounds = (2_000, 2) if args.quick else (args.calls, args.rounds)

    with tempfile.TemporaryDirectory() as tmp:
        trail = AuditTrail(f"sqlite:///{tmp}/capture.db", service_name="bench")
        every = AuditTrail(f"sqlite:///{tmp}/capture-event.db", service_name="bench",
                           span_backlink="event")
        try:
            # the pure-Python path (OTEL_AUDIT_PUREPYTHON=1, or no compiled module) copies
            # the call's values and builds rows in Python: its figures differ
            compiled = getattr(_accel, "speedups", None) is not None
            print(f"path     {'compiled accelerator' if compiled else 'pure Python'}")
            ours, sdk = bench_logging(trail, calls, rounds)
            print(f"logging  AuditLogHandler {ours:7.2f} us/call   "
                  f"SDK LoggingHandler+Batch {sdk:7.2f} us/call   "
                  f"ratio {ours / sdk:.2f}x {_verdict(ours / sdk, 0.6)}")
            ours, plain = bench_spans(trail, calls, rounds)
            print(f"spans    AuditSpanProcessor {ours:7.2f} us/span   "
                  f"no-op processor {plain:7.2f} us/span   "
                  f"extra {ours - plain:+.2f} us (target <= +3.00 us)  "
                  f"{'OK' if ours - plain <= 3.0 else 'MISSED'}")
            for label, which, in_span in (("record   outside a span      ", trail, False),
                                          ("record   in span, first      ", trail, True),
                                          ("record   in span, event      ", every, True)):
                a, b = bench_record(which, calls, rounds, in_span=in_span)
                ma, mb, pa, pb = (statistics.median(a), statistics.median(b),
                                  _p99(a), _p99(b))
                print(f"{label} record() median {ma:6.2f} p99 {pa:6.2f} us   "
                      f"Logger.emit median {mb:6.2f} p99 {pb:6.2f} us   "
                      f"ratio {ma / mb:.2f}x (p99 {pa / pb:.2f}x) "
                      f"{_verdict(ma / mb, 0.3) if in_span else ''}")
            first_calls = max(1, calls // 5)
            for label, which in (("first in a fresh span, first ", trail),
                                 ("first in a fresh span, event ", every)):
                ours, theirs = bench_first_in_span(which, first_calls)
                print(f"record   {label}record() median {ours:6.2f} us   "
                      f"Logger.emit median {theirs:6.2f} us   ratio {ours / theirs:.2f}x")
            for label, in_span in (("outside a span", False), ("in span, first", True)):
                ours, theirs, ours_cpu, theirs_cpu = bench_amortized(
                    trail, calls // rounds or 1, rounds, in_span=in_span)
                print(f"amortized {label:<19} record() + worker {ours:6.2f} us/record "
                      f"(CPU {ours_cpu:6.2f})   Logger.emit + batch worker "
                      f"{theirs:6.2f} us/record (CPU {theirs_cpu:6.2f})   "
                      f"ratio {ours / theirs:.2f}x (CPU {ours_cpu / theirs_cpu:.2f}x; "
                      f"no target)")
            for name, t in (("first", trail), ("event", every)):
                t.flush()
                stats = t.stats()
                print(f"trail ({name})  written {stats.written}  dropped {stats.dropped}  "
                      f"failed {stats.failed}")
        finally:
            every.shutdown()
            trail.shutdown()


if __name__ == "__main__":
    main()
