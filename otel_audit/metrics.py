"""Health signals of the audit pipeline as OpenTelemetry metrics (meter ``otel_audit``).

An operator alerts on these when audit logging itself fails (PCI DSS 10.7.2,
NIST SP 800-53 AU-5):

========================================  =========  ===============================
instrument                                kind       meaning
========================================  =========  ===============================
``otel_audit.records.written``            counter    records committed to the store
``otel_audit.records.spooled``            counter    records written to the disk spool
``otel_audit.records.replayed``           counter    spooled/journalled records committed
``otel_audit.records.dropped``            counter    records lost (attribute ``reason``)
``otel_audit.store.retries``              counter    failed store writes that will be retried
``otel_audit.worker.restarts``            counter    unexpected errors the pipeline's threads
                                                     caught and went on from
``otel_audit.export.duration``            histogram  seconds per store transaction
``otel_audit.queue.depth``                gauge      records waiting in memory
``otel_audit.spool.size``                 gauge      bytes waiting in the spool
========================================  =========  ===============================

Instruments are created once per process through the global ``MeterProvider`` (the
API's proxy forwards to a provider installed later); every trail reports into them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

__all__ = ["METER_NAME", "PipelineMetrics"]

METER_NAME = "otel_audit"

_lock = threading.Lock()
_instruments: dict[str, Any] = {}
_gauges: weakref.WeakSet[PipelineMetrics] = weakref.WeakSet()


def _observe(attr: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        total = 0
        for source in list(_gauges):
            try:
                total += getattr(source, attr)()
            except Exception:  # a gauge must never break the metric reader
                continue
        return [Observation(total)]

    return callback


def _get_instruments() -> dict[str, Any]:
    with _lock:
        if not _instruments:
            meter = metrics.get_meter(METER_NAME)
            for name, desc in (
                ("records.written", "Audit records committed to the store"),
                ("records.spooled", "Audit records written to the on-disk spool"),
                ("records.replayed", "Spooled or journalled audit records committed"),
                ("records.dropped", "Audit records lost (see the reason attribute)"),
                ("store.retries", "Failed audit store writes that will be retried"),
            ):
                _instruments[name] = meter.create_counter(
                    f"otel_audit.{name}", unit="{record}", description=desc)
            _instruments["worker.restarts"] = meter.create_counter(
                "otel_audit.worker.restarts", unit="{error}",
                description="Unexpected errors the audit pipeline's threads went on from")
            _instruments["export.duration"] = meter.create_histogram(
                "otel_audit.export.duration", unit="s",
                description="Duration of one audit store transaction")
            meter.create_observable_gauge(
                "otel_audit.queue.depth", callbacks=[_observe("queue_depth")], unit="{record}",
                description="Audit records waiting in memory")
            meter.create_observable_gauge(
                "otel_audit.spool.size", callbacks=[_observe("spool_bytes")], unit="By",
                description="Bytes of audit records waiting in the spool")
        return _instruments


class PipelineMetrics:
    """The instruments one pipeline reports to; cheap no-ops without a MeterProvider."""

    def __init__(self, queue_depth: Callable[[], int], spool_bytes: Callable[[], int]) -> None:
        inst = _get_instruments()
        self._written = inst["records.written"]
        self._spooled = inst["records.spooled"]
        self._replayed = inst["records.replayed"]
        self._dropped = inst["records.dropped"]
        self._retries = inst["store.retries"]
        self._restarts = inst["worker.restarts"]
        self._duration = inst["export.duration"]
        self.queue_depth = queue_depth
        self.spool_bytes = spool_bytes
        _gauges.add(self)

    def written(self, n: int, seconds: float) -> None:
        """A transaction of ``n`` records committed in ``seconds``."""
        self._written.add(n)
        self._duration.record(seconds)

    def spooled(self, n: int) -> None:
        """``n`` records went to the spool."""
        self._spooled.add(n)

    def replayed(self, n: int) -> None:
        """``n`` spooled or journalled records were committed."""
        self._replayed.add(n)

    def dropped(self, n: int, reason: str) -> None:
        """``n`` records were lost for ``reason``."""
        self._dropped.add(n, {"reason": reason})

    def retried(self) -> None:
        """A store write failed and will be retried (or its batch spooled)."""
        self._retries.add(1)

    def worker_restarted(self) -> None:
        """The worker or store thread caught an unexpected error and went on."""
        self._restarts.add(1)
