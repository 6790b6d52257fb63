"""Helpers for testing code that records audit events (as structlog's ``capture_logs``
and logfire's ``capfire``).

:func:`capture_audit` installs a trail whose records land in memory::

    from otel_audit.testing import capture_audit

    def test_delete_is_audited():
        with capture_audit() as audit:
            delete_invoice(42)            # calls otel_audit.record(...) somewhere
        [record] = audit.records
        assert record.action == "invoice.delete"

:class:`InMemoryAuditExporter` is the exporter behind it, usable on its own with
``AuditTrail(exporter=...)``; it can also be told to fail, to exercise what a trail
does when its destination is down, stalls, refuses a record or breaks the exporter
contract::

    exporter = InMemoryAuditExporter()
    exporter.fail_next(times=2)           # the next two exports: RETRYABLE
    exporter.fail_next(RuntimeError())    # the one after: raises (a broken exporter)
    exporter.fail_all()                   # an outage: every export RETRYABLE ...
    exporter.recover()                    # ... until now
    exporter.hold()                       # a destination that stalls: exports wait ...
    exporter.held.wait(5)                 # (set once one waits)
    exporter.release()                    # ... until now
    exporter.wait_for_calls(3, timeout=5) # three exports answered (exporter.calls)
"""

from __future__ import annotations

import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .exporters.base import AuditExporter, ExportResult
from .prepared import PreparedRecord
from .record import AuditRecord

__all__ = ["AuditCapture", "InMemoryAuditExporter", "capture_audit"]


class InMemoryAuditExporter(AuditExporter):
    """Keeps every exported record in memory, in order, once per ``id``.

    ``reject``: a predicate naming records to refuse for their content (the batch is
    answered ``REJECTED`` with their positions, as a store refusing a value would).
    :meth:`fail_next` queues answers given before anything is kept (a failure, or an
    exception raised), :meth:`fail_all` answers every export with a failure until
    :meth:`recover` (an outage), :meth:`hold` makes exports wait until :meth:`release`
    (a destination that stalls). ``calls`` lists every export's batch size and answer
    (:meth:`wait_for_calls` waits for them).
    """

    def __init__(self, *, reject: Callable[[PreparedRecord], bool] | None = None) -> None:
        self.reject = reject
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._prepared: list[PreparedRecord] = []
        self._ids: set[str] = set()
        self._scripted: deque[ExportResult | BaseException] = deque()
        self._down: ExportResult | None = None
        self._open = threading.Event()
        self._open.set()
        #: set while an export waits behind :meth:`hold` (cleared by :meth:`release`)
        self.held = threading.Event()
        self._shutdown = False
        #: every ``export`` call's batch size and result, in order (a raised exception
        #: is listed as the retryable result the trail takes it for)
        self.calls: list[tuple[int, ExportResult]] = []

    def fail_next(self, result: ExportResult | BaseException | None = None, *,
                  times: int = 1) -> None:
        """Answer the next ``times`` exports with ``result`` (default: retryable); an
        exception is raised from ``export`` instead, as by an exporter that breaks the
        contract (the trail counts it and keeps the batch)."""
        answer = result if result is not None else ExportResult.retryable("destination down")
        with self._lock:
            self._scripted.extend([answer] * times)

    def fail_all(self, result: ExportResult | None = None) -> None:
        """Answer every export with ``result`` (default: retryable) until :meth:`recover`."""
        with self._lock:
            self._down = result if result is not None else ExportResult.retryable(
                "destination down")

    def recover(self) -> None:
        """End :meth:`fail_all` and forget the answers :meth:`fail_next` queued."""
        with self._lock:
            self._down = None
            self._scripted.clear()

    def hold(self) -> None:
        """Make exports wait until :meth:`release` (:attr:`held` is set once one waits)."""
        self._open.clear()

    def release(self) -> None:
        """Let held exports (and later ones) go on."""
        self.held.clear()
        self._open.set()

    def wait_for_calls(self, n: int = 1, timeout: float | None = None) -> bool:
        """Wait until ``n`` exports were answered (:attr:`calls`); False after ``timeout``."""
        with self._answered:
            return self._answered.wait_for(lambda: len(self.calls) >= n, timeout)

    def export(self, batch: Sequence[PreparedRecord]) -> ExportResult:
        """Keep ``batch`` (or answer what :meth:`fail_next`/:meth:`fail_all`/``reject``
        say), once :meth:`release` let it through if it was held."""
        if not self._open.is_set():
            self.held.set()
            self._open.wait()
        with self._lock:
            result = self._export(batch)
            if isinstance(result, BaseException):
                self.calls.append((len(batch), ExportResult.retryable(repr(result))))
            else:
                self.calls.append((len(batch), result))
            self._answered.notify_all()
        if isinstance(result, BaseException):
            raise result
        return result

    def _export(self, batch: Sequence[PreparedRecord]) -> ExportResult | BaseException:
        if self._shutdown:
            return ExportResult.retryable("exporter is shut down")
        if self._scripted:
            return self._scripted.popleft()
        if self._down is not None:
            return self._down
        if self.reject is not None:
            refused = [i for i, prepared in enumerate(batch) if self.reject(prepared)]
            if refused:
                return ExportResult.rejected(f"{len(refused)} record(s) refused", refused)
        for prepared in batch:
            record_id = prepared.record.id
            if record_id not in self._ids:  # a replayed batch is stored once, as by a store
                self._ids.add(record_id)
                self._prepared.append(prepared)
        return ExportResult.SUCCESS

    def shutdown(self, timeout_millis: int = 30_000) -> bool:
        """Refuse later exports (retryable) and let held ones go; what was kept stays
        readable."""
        self._shutdown = True
        self._open.set()
        return True

    @property
    def prepared(self) -> list[PreparedRecord]:
        """The exported records as the pipeline prepared them (texts, chain fields)."""
        with self._lock:
            return list(self._prepared)

    def get_finished_records(self) -> list[AuditRecord]:
        """The exported records (normalised and redacted), in the order received."""
        with self._lock:
            return [prepared.record for prepared in self._prepared]

    def clear(self) -> None:
        """Forget what was kept (the ``id`` memory too)."""
        with self._lock:
            self._prepared.clear()
            self._ids.clear()
            self.calls.clear()


class AuditCapture:
    """What :func:`capture_audit` yields: the trail, its exporter and the records."""

    def __init__(self, trail: Any, exporter: InMemoryAuditExporter) -> None:
        self.trail = trail
        self.exporter = exporter

    @property
    def records(self) -> list[AuditRecord]:
        """Every record made so far, once the trail has flushed them."""
        self.trail.flush()
        return self.exporter.get_finished_records()

    def clear(self) -> None:
        """Flush, then forget the records captured so far."""
        self.trail.flush()
        self.exporter.clear()


@contextmanager
def capture_audit(exporter: InMemoryAuditExporter | None = None,
                  **settings: Any) -> Iterator[AuditCapture]:
    """A trail whose records land in memory, installed as the default trail meanwhile.

    ``settings`` are :class:`~otel_audit.trail.AuditTrail` settings (``mode``,
    ``service_name``, ``redact`` ...); the spool and journal go to a temporary
    directory removed on exit. The previous default trail is restored on exit.
    """
    from .trail import AuditTrail, set_trail  # the trail imports most of the package

    exporter = exporter if exporter is not None else InMemoryAuditExporter()
    with tempfile.TemporaryDirectory(prefix="otel-audit-capture-") as state:
        settings.setdefault("spool_dir", f"{state}/spool")
        settings.setdefault("journal_dir", f"{state}/journal")
        trail = AuditTrail("sqlite://", exporter=exporter, **settings)
        previous = set_trail(trail)
        try:
            yield AuditCapture(trail, exporter)
        finally:
            set_trail(previous)
            trail.shutdown()
