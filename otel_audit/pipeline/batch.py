"""The batching engine: a bounded in-memory queue drained by a background worker.

Shape borrowed from the OpenTelemetry SDK's batch processors (a queue, a worker woken
when a batch fills or the interval passes, deadline-bound shutdown, re-init after
fork), with differences that matter for an audit trail:

* a batch the store refuses for a transient reason is never thrown away: it goes to
  the on-disk spool and is replayed, in order, once the store answers (:mod:`.retry`);
* a full queue holds the caller briefly while the store keeps taking batches
  (backpressure), and spills to the spool when the store is failing; only when the
  spool is full or disabled does the overflow policy (``block``, ``drop_newest``,
  ``drop_oldest``) apply — counted, logged at ERROR, exported as a metric;
* ``durable`` mode journals each record on the caller's thread (:mod:`.journal`)
  before it is queued;
* no value and no failure stops it: the worker and store threads catch anything,
  count it (``worker_restarts``) and account for the records they held; a record the
  store refuses for its content is isolated, then stored in its safe form or
  quarantined (:mod:`.quarantine`);
* :meth:`BatchPipeline.shutdown` keeps its deadline whatever the store does
  (:mod:`.lifecycle`).

Work on the caller's thread in ``async`` mode (:meth:`BatchPipeline.submit`) is an
``append`` and a length check. Redaction, normalisation and chaining happen on the
worker (:mod:`.worker`, :mod:`.prepare`) — before anything reaches the spool or
journal — and the store write on a second thread (:mod:`.stage`).

:class:`BatchPipeline` is built in layers, one module per job (:mod:`.state` lists
them); this module is its caller's side.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .._internal import log_internal_error, suppress_instrumentation
from ..errors import AuditWriteError, StoreError
from ..prepared import PreparedRecord
from ..record import AuditRecord
from .items import (
    BatchSealer,
    DeferredRecords,
    FlushMarker,
    Item,
    RecordTransform,
    WrittenHook,
)
from .lifecycle import PipelineLifecycle
from .stats import AuditStats

__all__ = [
    "AuditStats",
    "BatchPipeline",
    "BatchSealer",
    "DeferredRecords",
    "RecordTransform",
    "WrittenHook",
]

#: how long a caller waits for the worker to take a batch off a full queue before its
#: record is spilled to the spool: a worker that takes nothing for this long is stuck
#: behind a failing or stalled store
_BACKPRESSURE_WAIT = 0.05


class BatchPipeline(PipelineLifecycle):
    """Queue + worker + writer for one trail. Thread-safe and fork-safe.

    ``BatchPipeline(config, writer, *, transforms=(), sealers=(), on_written=(),
    redactor=None, spool_dir=None, journal_dir=None)`` (see :mod:`.state`).
    """

    # ------------------------------------------------------------------ caller side

    def submit(self, record: Item) -> bool:
        """Hand ``record`` to the worker. Returns ``False`` if it had to be dropped."""
        queue = self._queue
        if len(queue) >= self._queue_size:
            return self._overflow(record)
        queue.append(record)
        if self._closed:  # after shutdown: no worker will take it; spooled or counted
            self._settle_queued("closed")
            return False
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()  # set() takes a lock: only when the worker is not already woken
        if self._worker is None:
            self._start_worker()
        return True

    def submit_durable(self, record: AuditRecord) -> None:
        """``durable`` mode: journal ``record`` (redacted, normalised), then queue it.

        If the journal cannot be written the record is committed synchronously instead;
        :class:`AuditWriteError` is raised only if that fails too.
        """
        self.submit_durable_batch([record])

    def submit_durable_batch(self, records: Sequence[AuditRecord]) -> None:
        """Journal ``records`` with one write and one ``fsync``, then queue them.

        For callers that acknowledge many records at once (an ingest request).
        """
        if self.journal is None:
            self.open_journal()
        journal = self.journal
        prepared = self._prepare_batch(records)
        if journal is not None:
            try:
                journal.append_batch(prepared)
            except OSError as exc:
                log_internal_error("journal_write", logging.ERROR,
                                   "audit journal write failed (%s); writing synchronously",
                                   exc)
            else:
                for item in prepared:
                    self.submit(item)
                return
        self.write_now(prepared)

    def _overflow(self, record: Item) -> bool:
        """The queue is full. A store that is merely slower than the callers gets
        backpressure: the caller waits for room as long as the worker keeps taking
        batches (it frees a batch's worth at a time, at the store's pace). A store that
        is failing — its last write failed, or the worker took nothing for
        :data:`_BACKPRESSURE_WAIT` — gets the spool:
        the record is spilled to disk and replayed once the store answers. Without a
        spool (or with it full), the overflow policy applies."""
        if self._closed:
            return self._drop(record, "closed")
        if self._worker is None:
            self._start_worker()
        spool = self.spool
        if spool is not None and self._backpressure():
            self._queue.append(record)
            return True
        if spool is not None:
            try:
                prepared = self._prepare_batch([record])
                if spool.append(prepared):
                    self._count_spooled(len(prepared))
                    self._wake.set()
                    return True
                reason = "spool_full"
            except OSError as exc:
                reason = "spool_unwritable"
                log_internal_error(f"spool_error:{id(self)}", logging.ERROR,
                                   "audit spool %s unwritable: %s", spool.directory, exc)
        else:
            reason = "queue_full"
        policy = self.config.overflow_policy
        if policy == "block" and self._wait_for_room():
            self._queue.append(record)
            return True
        if policy == "drop_oldest":
            try:
                oldest = self._queue.popleft()
            except IndexError:
                oldest = None
            if isinstance(oldest, FlushMarker):
                self._queue.appendleft(oldest)
            elif oldest is not None:
                self._queue.append(record)
                self._drop(oldest, reason)
                return True
        return self._drop(record, reason)

    def _backpressure(self) -> bool:
        """Wait for room while the worker keeps taking batches off the queue: True once
        there is room; False (spill) when the store is failing, or when the worker took
        nothing for :data:`_BACKPRESSURE_WAIT` (a store that stalls is failing too)."""
        while not self._store_failing and not self._closed:
            taken = self._drained
            if self._wait_for_room(_BACKPRESSURE_WAIT):
                return True
            if self._drained == taken:
                return False
        return False

    def _wait_for_room(self, timeout: float | None = None) -> bool:
        if self._closed:
            return False
        self._wake.set()
        if self._worker is None:
            self._start_worker()
        with self._space:
            return self._space.wait_for(
                lambda: len(self._queue) < self._queue_size,
                self.config.queue_full_timeout if timeout is None else timeout)

    def write_now(self, records: Sequence[Item]) -> None:
        """Write ``records`` on the caller's thread (``sync`` mode). Raises on failure."""
        with self._state_lock:
            self._sync_enqueued += len(records)
        try:
            with suppress_instrumentation():
                self._write(self._prepare_batch(records))
        except StoreError as exc:
            with self._state_lock:
                self._failed += len(records)
            raise AuditWriteError(str(exc)) from exc

    def write_in_transaction(self, records: Sequence[Item], connection: Any) -> list[
            PreparedRecord]:
        """Transactional outbox: write ``records`` on the caller's ``connection``.

        The rows commit or roll back with the caller's transaction. Records go through
        the same redaction, normalisation and sealers as every other write; the seal
        is taken under the write lock, the insert runs outside it (the caller's
        transaction may hold database locks the worker is waiting for).
        """
        with self._state_lock:
            self._sync_enqueued += len(records)
        with suppress_instrumentation():
            prepared = self._prepare_batch(records)
            with self._write_lock:
                self._seal_safely(prepared)
            self.writer.write_on(connection, prepared)
        return prepared
