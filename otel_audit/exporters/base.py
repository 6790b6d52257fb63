"""The exporter contract: what a trail's pipeline sends its batches to.

Shaped like OpenTelemetry's ``SpanExporter``/``LogExporter``: the pipeline calls
:meth:`AuditExporter.export` with one batch at a time from its own thread (never two
calls at once on the same exporter), :meth:`~AuditExporter.force_flush` when the trail
is flushed and :meth:`~AuditExporter.shutdown` once, when it stops. Everything else —
the queue, batching, retries with backoff, the disk spool, isolating a refused record
and quarantining it — is the pipeline's job, identical for every destination.

Unlike OpenTelemetry's two-valued result, an audit exporter says *why* a batch failed,
because the pipeline acts differently on each:

* :attr:`ExportStatus.RETRYABLE` — the destination's state (an outage, a lock, a
  timeout): the same batch is retried later, spooled to disk meanwhile; nothing is
  dropped;
* :attr:`ExportStatus.REJECTED` — the batch's content (a value the destination refuses):
  retrying the same rows cannot help. ``failed`` names the refused records by their
  position in the batch where the exporter knows them; otherwise the pipeline isolates
  them by splitting the batch, stores the rest, and stores a refused record in its safe
  form or quarantines it.

Exporters must be idempotent on the record's ``id`` (a batch replayed after a crash or
an ambiguous failure may arrive twice) and should not raise: an exception out of
``export`` is treated as a retryable failure and logged.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..prepared import PreparedRecord

__all__ = ["AuditExporter", "ExportResult", "ExportStatus"]


class ExportStatus(enum.Enum):
    """The outcome of one :meth:`AuditExporter.export` call."""

    SUCCESS = "success"
    RETRYABLE = "retryable"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :meth:`AuditExporter.export` answers: a status, and for a failure its reason.

    ``failed``: positions (in the exported batch) of the records a ``REJECTED`` batch
    was refused for, where the exporter knows them; empty when it does not.
    Build with :meth:`success`, :meth:`retryable` or :meth:`rejected`.
    """

    status: ExportStatus
    error: str | None = None
    failed: tuple[int, ...] = ()

    SUCCESS: ClassVar[ExportResult]

    @classmethod
    def success(cls) -> ExportResult:
        """The batch is durably stored (or delivered and acknowledged)."""
        return cls.SUCCESS

    @classmethod
    def retryable(cls, error: str | BaseException) -> ExportResult:
        """The destination failed for its own state; the same batch may succeed later."""
        return cls(ExportStatus.RETRYABLE, str(error))

    @classmethod
    def rejected(cls, error: str | BaseException, failed: Sequence[int] = ()) -> ExportResult:
        """The destination refused the batch's content (``failed``: which records)."""
        return cls(ExportStatus.REJECTED, str(error), tuple(failed))

    @property
    def ok(self) -> bool:
        """Whether the batch was exported."""
        return self.status is ExportStatus.SUCCESS


ExportResult.SUCCESS = ExportResult(ExportStatus.SUCCESS)


class AuditExporter(ABC):
    """Where a trail's batches go: a store, a forwarding destination, memory in tests.

    Subclasses implement :meth:`export`; :meth:`force_flush` and :meth:`shutdown`
    default to having nothing to do. Timeouts are in milliseconds, as in
    OpenTelemetry's exporters.
    """

    #: Whether the pipeline calls :meth:`export` on a thread of its own (its store
    #: stage), so that its worker prepares the next batch meanwhile; False: on the
    #: worker, between two batches. A second thread overlaps the export with the
    #: preparation only as far as the export runs without the GIL, and each batch then
    #: crosses threads (GIL hand-offs, wake-ups): worth it for an exporter whose cost
    #: is unknown, and for SQLite's in-process inserts; PostgreSQL measured faster
    #: without it.
    own_thread: ClassVar[bool] = True

    @abstractmethod
    def export(self, batch: Sequence[PreparedRecord]) -> ExportResult:
        """Send ``batch`` (normalised, redacted and, when the trail chains, sealed
        records, in order) as one unit; answer how it went (see :class:`ExportResult`).
        Idempotent on ``record.id``; should not raise."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send anything the exporter itself buffers; True once done within the time."""
        return True

    def shutdown(self, timeout_millis: int = 30_000) -> bool:
        """Release the exporter's resources; later exports may fail. True if it stopped
        cleanly within the time."""
        return True
