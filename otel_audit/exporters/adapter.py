"""Running a trail's pipeline into any :class:`~.base.AuditExporter`.

The pipeline drives a :class:`~otel_audit.store.writer.StoreWriter`; this writer sends
each batch to an exporter instead of its store and turns the exporter's answer into
what the pipeline acts on: a ``RETRYABLE`` result (or an exception) is a transient
:class:`~otel_audit.errors.StoreError` — the batch is retried and spooled, never
dropped — and a ``REJECTED`` one a permanent error, so the pipeline isolates the refused
records and stores their safe form or quarantines them, as for a store.

The database at the writer's URL still holds what the trail reads back: the head of its
hash chain when it starts, and :meth:`AuditTrail.records`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import Connection
from sqlalchemy.engine import URL

from ..errors import StoreError
from ..prepared import PreparedRecord
from ..store.writer import StoreWriter
from .base import AuditExporter, ExportStatus
from .store import BatchStream

__all__ = ["ExporterWriter"]

logger = logging.getLogger("otel_audit.exporters")


class ExporterWriter(StoreWriter):
    """A writer whose batches go to ``exporter`` (see the module's docstring)."""

    def __init__(self, exporter: AuditExporter, url: str | URL = "sqlite://", *,
                 auto_migrate: bool | None = None) -> None:
        super().__init__(url, auto_migrate=auto_migrate)
        self.destination = exporter

    @property
    def own_thread(self) -> bool:
        """Whether batches are exported on a thread of their own: the exporter's choice."""
        return self.destination.own_thread

    def encode(self, batch: Sequence[PreparedRecord]) -> bytes | None:
        """Nothing is prepared ahead for an exporter."""
        return None

    def stream(self) -> BatchStream | None:
        """An exporter takes whole batches."""
        return None

    def write(self, batch: Sequence[PreparedRecord], *, encoded: bytes | None = None) -> None:
        """Export ``batch``; raise :class:`StoreError` unless it succeeded."""
        if not batch:
            return
        try:
            result = self.destination.export(batch)
        except Exception as exc:  # the contract says never raise: treat it as an outage
            logger.debug("exporter %r raised", self.destination, exc_info=True)
            raise StoreError(f"exporter failed: {exc!r}") from exc
        status = result.status
        if status is ExportStatus.SUCCESS:
            return
        if status is ExportStatus.REJECTED:
            raise StoreError(f"exporter rejected the batch: {result.error}", transient=False)
        raise StoreError(f"export failed: {result.error}")

    def write_on(self, connection: Connection, batch: Sequence[PreparedRecord]) -> None:
        """The transactional outbox needs the store itself: refused."""
        raise StoreError("the transactional outbox is not available when records go to "
                         "an exporter", transient=False)

    def dispose(self, *, close: bool = True, timeout: float | None = None) -> None:
        """Shut the exporter down (not after fork: it is the parent's), then the engine."""
        if close:
            millis = 30_000 if timeout is None else max(0, int(timeout * 1000))
            try:
                self.destination.force_flush(millis)
                self.destination.shutdown(millis)
            except Exception:  # an exporter's failure never stops the trail's shutdown
                logger.debug("exporter %r failed to shut down", self.destination, exc_info=True)
        super().dispose(close=close, timeout=timeout)

    def __repr__(self) -> str:
        return f"ExporterWriter({self.destination!r})"
