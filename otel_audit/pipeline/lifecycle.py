"""Flush and shutdown, within their deadlines.

:meth:`PipelineLifecycle.shutdown` keeps its deadline whatever the store does: what is
still in flight then goes to the spool (or stays in the journal) and the statement is
cancelled.
"""

from __future__ import annotations

import logging
import threading
import time

from .._internal import log_internal_error, logger
from .items import FlushMarker
from .worker import PipelineWorker

__all__ = ["PipelineLifecycle"]


class PipelineLifecycle(PipelineWorker):
    """Flush and shutdown (a layer of the pipeline)."""

    def _settle_queued(self, reason: str) -> bool:
        """Take what is left in the queue once the worker has stopped, to the spool (or
        the journal that holds it already); count and log what neither holds. The queue
        is emptied one item at a time: a caller still submitting while the trail shuts
        down (an at-exit shutdown) may append at the same moment, and each item is then
        taken by exactly one of the two. True when anything was left."""
        queue, remaining = self._queue, []
        while True:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if not isinstance(item, FlushMarker):
                remaining.append(item)
        if not remaining:
            return False
        lost = len(remaining) - self._spool_on_exit(remaining)
        if lost:
            with self._state_lock:
                self._failed += lost
            self.metrics.dropped(lost, reason)
            if reason == "shutdown":
                logger.error("audit shutdown: %d records were not written before the "
                             "deadline", lost)
            else:
                logger.error("audit trail closed: %d records submitted after shutdown were "
                             "not written", lost)
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted before the call is committed.

        Records waiting in the spool count as not committed yet: with the store down
        this returns ``False`` after ``timeout``.
        """
        if self._durable and self.journal is None:
            self.open_journal()  # a new process replays what a dead one journalled
        spool = self.spool
        spooled = spool is not None and spool.pending()
        if not spooled and (self._worker is None or (not self._queue and not self._busy)):
            with self._write_lock:  # a sync or outbox write may be in flight
                return not self._queue
        if self._worker is None:
            self._start_worker()
        marker = FlushMarker()
        self._queue.append(marker)
        self._replay_at = 0.0  # a flush is a good moment to try the store again
        self._wake.set()
        return marker.done.wait(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush, stop the worker and release connections, all within ``timeout``.

        Records the store did not take before the deadline go to the spool (or stay in
        the journal) for the next process using the same directory; with neither, they
        are counted as failed and logged. A store that holds a write past the deadline
        (a lock held by another session) does not hold up the return: the batches in
        flight are spooled, the statement is cancelled, and the threads write nothing
        more (a batch whose commit was already under way may land as well; its replay
        is then ignored, writes being idempotent on ``id``).
        """
        if self._closed:
            return True
        budget = self.config.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + max(0.0, budget)
        flushed = self.flush(budget)
        self._closed = True
        self._stop.set()
        self._wake.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():  # held by the store past the deadline
                flushed = False
                self._abandon()
        if self._settle_queued("shutdown"):
            flushed = False
        spool = self.spool
        if spool is not None:
            if spool.records:
                logger.warning("audit shutdown: %d records wait in the spool %s for the next "
                               "process", spool.records, spool.directory)
                flushed = False
            if not (self._abandoned and self._replaying):  # a replay would read a closed file
                spool.close()  # releases its segments: the next trail adopts them
        if self.journal is not None:
            if self.journal.pending:
                logger.warning("audit shutdown: %d durable records wait in the journal %s",
                               self.journal.pending, self.journal.directory)
            if not self._abandoned:
                self.journal.close()
        if self.quarantine is not None:
            self.quarantine.close()
        self.writer.dispose(timeout=max(0.0, deadline - time.monotonic())
                            if not self._abandoned else 0.0)
        return flushed

    def _abandon(self) -> None:
        """The deadline passed with batches still in flight: spool them, cancel the
        statement the store is running, and let the threads write nothing more."""
        with self._state_lock:
            self._abandoned = True
            batches = list(self._inflight.values())
            self._abandoned_batches.update(self._inflight)  # accounted for here only
            self._inflight.clear()
        held = sum(map(len, batches))
        kept = sum(self._spool_on_exit(batch) for batch in batches)
        if held - kept:
            with self._state_lock:
                self._failed += held - kept
            self.metrics.dropped(held - kept, "shutdown")
            logger.error("audit shutdown: the store held %d records past the deadline and "
                         "they could not be spooled", held - kept)
        elif held:
            logger.warning("audit shutdown: the store held %d records past the deadline; "
                           "they are in the spool", held)
        try:
            self.writer.interrupt(wait=False)  # never waits: the deadline has passed
        except Exception:
            log_internal_error("interrupt", logging.WARNING,
                               "audit shutdown: cannot cancel the store's statement",
                               exc_info=True)
