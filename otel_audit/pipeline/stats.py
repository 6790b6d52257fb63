"""The pipeline's counters: :class:`AuditStats` and what counts a record's fate.

Every record a trail is given ends up counted once: ``written`` (committed),
``failed`` (refused or lost at a deadline; ``quarantined`` when kept on disk) or
``dropped`` (the overflow policy); ``spooled``/``replayed`` count records that went
through the disk on the way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .._internal import log_internal_error, logger
from ..prepared import PreparedRecord
from .items import DeferredRecords, Item
from .state import PipelineState

__all__ = ["AuditStats", "PipelineCounters"]


@dataclass(frozen=True, slots=True)
class AuditStats:
    """Counters of one trail since it was created (or since fork, in a child).

    ``spooled``/``replayed`` count records that went through the disk spool (or, for
    ``replayed``, a journal left by a dead process); ``spool_records``/``spool_bytes``
    are what waits there now; ``journal_pending`` counts ``durable`` records not yet
    committed to the store. ``quarantined`` counts records the store refused even in
    their safe form (each also counted in ``failed`` and kept in the quarantine
    directory); ``worker_restarts`` counts unexpected errors the worker or store
    thread caught and went on from (each logged at ERROR).
    """

    enqueued: int
    written: int
    retried: int
    failed: int
    dropped: int
    queue_depth: int
    spooled: int = 0
    replayed: int = 0
    spool_records: int = 0
    spool_bytes: int = 0
    journal_pending: int = 0
    quarantined: int = 0
    worker_restarts: int = 0
    #: records the store already held (same ``id``: a retry, a replay), kept once and
    #: not counted in ``written`` (see AuditTrail.stats)
    duplicates: int = 0


class PipelineCounters(PipelineState):
    """Counting and reporting what happened to records (a layer of the pipeline)."""

    def stats(self) -> AuditStats:
        """Return the current counters."""
        depth = self._queue_depth()
        spool = self.spool
        with self._state_lock:
            return AuditStats(
                enqueued=self._drained + depth + self._sync_enqueued,
                written=self._written,
                retried=self._retried,
                failed=self._failed,
                dropped=self._dropped,
                queue_depth=depth,
                spooled=self._spooled,
                replayed=self._replayed,
                spool_records=spool.records if spool is not None else 0,
                spool_bytes=spool.size if spool is not None else 0,
                journal_pending=self.journal.pending if self.journal is not None else 0,
                quarantined=self._quarantined,
                worker_restarts=self._restarts,
            )

    def _count_spooled(self, n: int) -> None:
        with self._state_lock:
            self._spooled += n
        self.metrics.spooled(n)

    def _worker_failed(self, where: str, exc: BaseException) -> None:
        """Count and log (rate-limited) an unexpected error the worker or the store
        thread caught; the caller accounts for the records it held and goes on.

        Anything is caught, ``BaseException`` included: on these threads a
        ``KeyboardInterrupt`` or ``SystemExit`` can only come from a hook or a value's
        own code (signals go to the main thread), and a worker that ended on it would
        leave every later record in memory.
        """
        with self._state_lock:
            self._restarts += 1
        self.metrics.worker_restarted()
        log_internal_error(f"worker_error:{where}:{id(self)}", logging.ERROR,
                           "audit %s thread: unexpected %s (records accounted for, going on)",
                           where, type(exc).__name__, exc_info=True)

    def _keep_quarantined(self, item: PreparedRecord, reason: str) -> bool:
        quarantine = self.quarantine
        return quarantine is not None and quarantine.append(item, reason)

    def _count_failed(self, items: list[PreparedRecord], reason: str, *,
                      quarantine: bool, kept: int = 0) -> None:
        """Records that could not be stored: counted, logged at ERROR, quarantined
        (``kept``: how many of them the caller already put in quarantine)."""
        for item in items:
            if quarantine and self._keep_quarantined(item, reason):
                kept += 1
        with self._state_lock:
            self._failed += len(items)
            self._quarantined += kept
        self.metrics.dropped(len(items), "rejected")
        where = self.quarantine.directory if self.quarantine is not None and kept else None
        for item in items[:10]:
            logger.error("audit record %s (action=%r) could not be stored (%s)%s",
                         item.record.id, item.record.action, reason,
                         f"; kept in {where}" if where else "")

    def _drop(self, item: Item, reason: str) -> bool:
        if isinstance(item, DeferredRecords):
            for record in item.resolve():
                self._drop(record, reason)
            return False
        record = item.record if isinstance(item, PreparedRecord) else item
        with self._state_lock:
            self._dropped += 1
            dropped = self._dropped
        self.metrics.dropped(1, reason)
        log_internal_error(
            f"queue_full:{id(self)}", logging.ERROR,
            "audit queue full (%d records, %s): dropped record %s (action=%s); "
            "%d dropped so far",
            self._queue_size, reason, record.id, record.action, dropped,
        )
        return False
