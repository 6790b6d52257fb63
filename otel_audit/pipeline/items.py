"""What the pipeline's queue carries, and the hooks a trail installs on it.

The queue holds :class:`~otel_audit.record.AuditRecord` (built on the caller's thread),
:class:`~otel_audit.prepared.PreparedRecord` (journalled or spooled: already redacted and
normalised), :class:`DeferredRecords` (built on the worker) and :class:`FlushMarker`
(a flush waiting for what precedes it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from .._internal import log_internal_error
from ..prepared import PreparedRecord
from ..record import AuditRecord

__all__ = [
    "BatchSealer",
    "DeferredRecords",
    "FlushMarker",
    "Item",
    "RecordTransform",
    "WrittenHook",
    "resolve_items",
]

#: Runs on each record before normalisation (redaction, enrichment).
RecordTransform = Callable[[AuditRecord], AuditRecord]
#: Runs on each normalised batch before it is written (integrity chaining).
BatchSealer = Callable[[list[PreparedRecord]], list[PreparedRecord]]
#: Runs after a batch is committed (metrics, OpenTelemetry log emission).
WrittenHook = Callable[[Sequence[PreparedRecord]], None]


class DeferredRecords:
    """Records whose building is left to the worker.

    For capture paths nobody waits on (a span processor's ``on_end``): the caller's
    thread only queues ``build``, and the worker calls it to get the records.
    """

    __slots__ = ("build",)

    def __init__(self, build: Callable[[], Sequence[AuditRecord]]) -> None:
        self.build = build

    def resolve(self) -> Sequence[AuditRecord]:
        """Build the records; a builder that fails is logged and yields none."""
        try:
            return self.build()
        except Exception:
            log_internal_error("deferred", logging.ERROR,
                               "could not build deferred audit records", exc_info=True)
            return ()


#: One entry of the queue (besides flush markers).
Item = AuditRecord | PreparedRecord | DeferredRecords


class FlushMarker:
    """Queued by a flush; set once everything queued before it is committed."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


def resolve_items(items: Sequence[Item]) -> list[AuditRecord | PreparedRecord]:
    """``items`` with every :class:`DeferredRecords` replaced by the records it builds."""
    if DeferredRecords not in set(map(type, items)):
        return list(items)  # type: ignore[arg-type]
    out: list[AuditRecord | PreparedRecord] = []
    for item in items:
        if isinstance(item, DeferredRecords):
            out.extend(item.resolve())
        else:
            out.append(item)
    return out
