"""The batching engine: a bounded in-memory queue drained by a background worker.

Shape borrowed from the OpenTelemetry SDK's batch processors (a queue, a worker woken
when a batch fills or the interval passes, deadline-bound shutdown, re-init after
fork), with differences that matter for an audit trail:

* a batch the store refuses for a transient reason is never thrown away: it goes to
  the on-disk spool (:mod:`.spool`) and is replayed, in order, once the store
  answers; while anything is spooled, new batches queue up behind it in the spool;
* a full queue spills to the spool too; only when the spool is full or disabled does
  the overflow policy (``block``, ``drop_newest``, ``drop_oldest``) apply — counted,
  logged at ERROR, exported as a metric;
* ``durable`` mode journals each record on the caller's thread (:mod:`.journal`)
  before it is queued;
* no value and no failure stops it: the worker and store threads catch anything,
  count it (``worker_restarts``) and account for the records they held; a record the
  store refuses for its content is isolated by halving its batch, then stored in its
  safe form or quarantined (:mod:`.quarantine`), live and on spool replay alike;
* :meth:`BatchPipeline.shutdown` keeps its deadline whatever the store does: what is
  still in flight then goes to the spool and the statement is cancelled.

Work on the caller's thread in ``async`` mode (:meth:`BatchPipeline.submit`) is an
``append`` and a length check. Redaction, normalisation and chaining happen on the
worker — before anything reaches the spool or journal — and the store write on a
second thread (:class:`_StoreStage`): while the database commits batch *n*, the worker
prepares batch *n + 1* (on PostgreSQL including its COPY text, so the store thread only
sends it). A batch
in which nothing needs redacting or normalising is checked column by column (C-level
``map``/``zip`` passes) rather than record by record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import multiprocessing.util
import operator
import os
import random
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise, repeat
from typing import Any

from .._internal import log_internal_error, logger, suppress_instrumentation
from ..config import AuditConfig
from ..errors import AuditWriteError, StoreError
from ..metrics import PipelineMetrics
from ..prepared import PreparedRecord
from ..record import NORMALISATION_KEY, AuditRecord, normalise, plain_texts
from ..redact import Redactor
from ..store.writer import StoreWriter
from .journal import Journal
from .quarantine import Quarantine, quarantine_dir_for, safe_record, safe_texts
from .spool import Spool
from .stage import _StoreStage

__all__ = [
    "AuditStats",
    "BatchPipeline",
    "BatchSealer",
    "DeferredRecords",
    "RecordTransform",
    "WrittenHook",
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


_Item = AuditRecord | PreparedRecord | DeferredRecords
_CHUNK = 64  # records prepared between two pauses for the store stage (a fraction of a ms)
_FIRST_CHUNK = 8
#: sealed batches that may wait behind the one being written: the worker seals ahead
#: while the application's threads leave it the GIL, instead of blocking until the
#: store takes the next one (about 4% more records/s end to end on PostgreSQL than one)
_STORE_DEPTH = 4
#: how long a caller waits for the worker to take a batch off a full queue before its
#: record is spilled to the spool: a worker that takes nothing for this long is stuck
#: behind a failing or stalled store
_BACKPRESSURE_WAIT = 0.05
_ORPHAN_SCAN_INTERVAL = 30.0  # seconds between looks for spool segments of dead processes
#: the range of the ``schema_version`` column (INTEGER, 32 bits, on every store)
_VERSION_RANGE = (-(2**31), 2**31 - 1)
#: IDs of refused records remembered, so a spool segment replayed again after a
#: transient failure does not store (or count) the same record twice
_DEALT_IDS = 4096


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


class _FlushMarker:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class BatchPipeline:
    """Queue + worker + writer for one trail. Thread-safe and fork-safe."""

    def __init__(
        self,
        config: AuditConfig,
        writer: StoreWriter,
        *,
        transforms: Sequence[RecordTransform] = (),
        sealers: Sequence[BatchSealer] = (),
        on_written: Sequence[WrittenHook] = (),
        redactor: RecordTransform | None = None,
        spool_dir: str | None = None,
        journal_dir: str | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.transforms = list(transforms)
        self.sealers = list(sealers)
        self.on_written = list(on_written)
        #: Applied first to every record, also when a transform fails (never skipped).
        self.redactor = redactor
        self._spool_dir = spool_dir
        self._journal_dir = journal_dir
        self._batch_size = config.batch_size
        self._queue_size = config.queue_size
        self._init_state()
        ref = weakref.ref(self)

        def _after_fork() -> None:
            pipeline = ref()
            if pipeline is not None:
                pipeline._after_fork_in_child()

        os.register_at_fork(after_in_child=_after_fork)
        # multiprocessing children leave through os._exit, which skips atexit, and clear
        # finalisers right after fork: register the drain-on-exit from its after-fork hook
        multiprocessing.util.register_after_fork(self, BatchPipeline._finalise_on_exit)
        # a durable trail adopts journals left by dead processes on first use (first
        # record, flush or worker start) — after the trail has installed its sealers
        self._durable = config.mode == "durable"
        self._journal_lock = threading.Lock()

    def _finalise_on_exit(self) -> None:
        multiprocessing.util.Finalize(self, self.shutdown, exitpriority=100)

    def _init_state(self) -> None:
        self._queue: deque[_Item | _FlushMarker] = deque()
        self._wake = threading.Event()
        self._space = threading.Condition(threading.Lock())
        self._stop = threading.Event()
        self._write_lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._store = _StoreStage(None, _STORE_DEPTH)
        self._busy = 0  # batches taken off the queue and not yet committed (or spooled)
        self._closed = False
        self._drained = 0
        self._written = 0
        self._retried = 0
        self._failed = 0
        self._dropped = 0
        self._sync_enqueued = 0
        self._spooled = 0
        self._replayed = 0
        self._quarantined = 0
        self._restarts = 0
        #: IDs of refused records already stored in safe form or quarantined
        self._dealt_ids: deque[str] = deque(maxlen=_DEALT_IDS)
        #: batches taken off the queue and not yet committed, spooled or accounted for
        #: (raw items until prepared): what shutdown spools when its deadline passes
        self._inflight: dict[int, list[Any]] = {}
        #: set by a shutdown past its deadline: what was in flight is in the spool, so
        #: the worker and store threads write nothing more
        self._abandoned = False
        self._replaying = False  # the worker is writing spooled records
        self._waiting: list[_FlushMarker] = []  # flushes waiting for the spool to drain
        self._replay_at = 0.0
        self._replay_attempt = 0
        #: the last write attempt failed for the store's state (cleared by the next commit):
        #: a full queue then spills to the spool instead of holding the caller
        self._store_failing = False
        self.spool: Spool | None = None
        if self._spool_dir is not None and self.config.spool_max_bytes > 0:
            self.spool = Spool(self._spool_dir, self.config.spool_max_bytes)
        self.journal: Journal | None = None
        self.quarantine: Quarantine | None = None
        if self._spool_dir is not None:
            self.quarantine = Quarantine(quarantine_dir_for(self._spool_dir))
        self.metrics = PipelineMetrics(self._queue_depth, self._spool_bytes)

    def _after_fork_in_child(self) -> None:
        # The parent writes what it had queued; the child starts empty with its own
        # worker, locks, connections, spool and journal segments, so no record is ever
        # written twice. Inherited segment descriptors are closed so the parent's
        # segments become adoptable as soon as the parent dies.
        for holder in (self.spool, self.journal):
            for segment in _segments_of(holder):
                segment.close()
        if self.quarantine is not None:
            self.quarantine.close()
        self._init_state()
        self.writer.dispose(close=False)

    def open_journal(self) -> None:
        """Open this process's journal and re-submit records left by dead processes."""
        with self._journal_lock:
            if self._journal_dir is None or self.journal is not None:
                return
            journal = Journal(self._journal_dir, self.config.fsync)
            self.journal = journal
        try:
            orphans = journal.adopt_orphans()
        except OSError:
            log_internal_error("journal_adopt", logging.ERROR,
                               "cannot read the audit journal in %s", self._journal_dir,
                               exc_info=True)
            return
        if orphans:
            logger.warning("audit journal: replaying %d records left by a stopped process",
                           len(orphans))
            with self._state_lock:
                self._replayed += len(orphans)
            for prepared in orphans:
                self.submit(prepared)

    # ------------------------------------------------------------------ caller side

    def submit(self, record: _Item) -> bool:
        """Hand ``record`` to the worker. Returns ``False`` if it had to be dropped."""
        queue = self._queue
        if len(queue) >= self._queue_size:
            return self._overflow(record)
        queue.append(record)
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

    def _overflow(self, record: _Item) -> bool:
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
            if isinstance(oldest, _FlushMarker):
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

    def _drop(self, item: _Item, reason: str) -> bool:
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

    def _start_worker(self) -> None:
        with self._state_lock:
            if self._worker is not None or self._closed:
                return
            worker = threading.Thread(target=self._run, name="otel-audit-writer", daemon=True)
            self._worker = worker
        worker.start()

    def write_now(self, records: Sequence[_Item]) -> None:
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

    def write_in_transaction(self, records: Sequence[_Item], connection: Any) -> list[
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
        marker = _FlushMarker()
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
        remaining = [item for item in self._queue if not isinstance(item, _FlushMarker)]
        if remaining:
            self._queue.clear()
            kept = self._spool_on_exit(remaining)
            lost = len(remaining) - kept
            if lost:
                with self._state_lock:
                    self._failed += lost
                self.metrics.dropped(lost, "shutdown")
                logger.error("audit shutdown: %d records were not written before the deadline",
                             lost)
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

    def _spool_on_exit(self, items: list[_Item]) -> int:
        """Move what is left in memory to the spool; return how many were kept."""
        spool = self.spool
        journalled = sum(1 for item in items if self._in_journal(item))
        if spool is None:
            return journalled
        try:
            prepared = self._prepare_batch(items)
            if spool.append(prepared):
                self._count_spooled(len(prepared))
                return len(items)
        except Exception:
            log_internal_error("spool_exit", logging.ERROR,
                               "audit shutdown: cannot spool the remaining records",
                               exc_info=True)
        return journalled

    def _in_journal(self, item: _Item) -> bool:
        return self.journal is not None and isinstance(item, PreparedRecord)

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

    def _queue_depth(self) -> int:
        return sum(1 for item in list(self._queue) if not isinstance(item, _FlushMarker))

    def _spool_bytes(self) -> int:
        return self.spool.size if self.spool is not None else 0

    def _count_spooled(self, n: int) -> None:
        with self._state_lock:
            self._spooled += n
        self.metrics.spooled(n)

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        with suppress_instrumentation():
            try:
                while True:
                    try:
                        self._loop()
                        return
                    except BaseException as exc:  # the worker never dies (see _worker_failed)
                        if self._abandoned:
                            return
                        self._worker_failed("worker", exc)
                        # an error that recurs at once must not spin: a short pause
                        self._stop.wait(0.05)
            finally:
                self._store.stop()

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

    def _loop(self) -> None:
        if self._durable and self.journal is None:
            self.open_journal()
        next_scan = time.monotonic() + _ORPHAN_SCAN_INTERVAL
        while True:
            wait = self.config.flush_interval
            if self.spool is not None and self.spool.pending():
                wait = max(0.0, min(wait, self._replay_at - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()
            self._drain()
            if self.spool is not None and time.monotonic() >= next_scan:
                # segments of processes that died since we started: adopt and replay
                next_scan = time.monotonic() + _ORPHAN_SCAN_INTERVAL
                self.spool.rescan()
            self._maybe_replay()
            if self._stop.is_set():
                self._drain()
                self._store.wait()
                return

    def _drain(self) -> None:
        queue = self._queue
        spool = self.spool
        while queue:
            if spool is not None and not self._store_failing and spool.pending():
                # spilled under overload while the store works: read it back now, or
                # every batch behind it would go through the disk too (order is kept)
                self._maybe_replay()
            batch: list[_Item] = []
            markers: list[_FlushMarker] = []
            with self._state_lock:
                self._busy += 1  # before taking anything: flush() must see it in flight
            while queue and len(batch) < self._batch_size:
                item = queue.popleft()
                if isinstance(item, _FlushMarker):
                    markers.append(item)
                    break
                batch.append(item)
            with self._space:
                self._space.notify_all()
            try:
                if batch:
                    with self._state_lock:
                        self._drained += len(batch)
                        self._inflight[id(batch)] = batch
                    self._hand_over(batch)
                else:
                    self._done_busy()
            finally:  # a flush waiting here is never forgotten, whatever happened above
                if markers:
                    self._store.wait()  # a flush returns only after what precedes it committed
                    self._waiting.extend(markers)
                    self._maybe_replay()
                    self._release_markers()
            if self._stop.is_set() and self._closed and not batch and not markers:
                return

    def _hand_over(self, batch: list[_Item]) -> None:
        """Prepare and seal ``batch``, then queue its write on the store stage. Whatever
        goes wrong on the way, its records are written, spooled or counted."""
        key = id(batch)
        try:
            # prepared and sealed here while the store stage commits the previous
            # batch, in chunks: between them a store thread back from the database
            # gets the GIL (the first chunk is short: a write just handed over
            # soon comes back from its first round trip)
            prepared: list[PreparedRecord] = []
            for start, end in _chunks(len(batch)):
                part = self._prepare_batch(batch[start:end])
                self._seal_ahead(part)
                prepared += part
                self._store.pause()
            encoded = self._encode(prepared)  # the store thread only sends it
        except BaseException as exc:  # record by record, unsealed: the store stage seals
            self._worker_failed("worker", exc)
            prepared = [self._salvage(item, exc) for item in _resolved(batch)]
            encoded = None
        with self._state_lock:
            if self._abandoned:  # shutdown spooled the batch already
                self._inflight.pop(key, None)
                self._busy -= 1
                return
            self._inflight.pop(key, None)
            self._inflight[id(prepared)] = prepared
        self._store.run(functools.partial(self._write_prepared, prepared, encoded))

    def _salvage(self, item: AuditRecord | PreparedRecord, exc: BaseException) -> PreparedRecord:
        """One record of a batch whose preparation failed: prepared on its own."""
        if isinstance(item, PreparedRecord):  # journalled: prepared (and maybe sealed)
            return item
        try:
            return self._prepare_one(item)
        except BaseException:
            return self._safe_prepared(item, f"worker error: {exc!r}")

    def _encode(self, prepared: list[PreparedRecord]) -> bytes | None:
        try:
            return self.writer.encode(prepared)
        except Exception:  # the writer's own fallback failed: the store stage encodes
            return None

    def _done_busy(self) -> None:
        with self._state_lock:
            self._busy -= 1

    def _release_markers(self) -> None:
        if self._waiting and (self.spool is None or not self.spool.pending()):
            waiting, self._waiting = self._waiting, []
            for marker in waiting:
                marker.done.set()

    def _prepare_batch(self, batch: Sequence[_Item]) -> list[PreparedRecord]:
        try:
            prepared = self._prepare(batch)
        except Exception:  # one record's value or a transform bug: record by record
            log_internal_error("prepare", logging.ERROR,
                               "audit record preparation failed", exc_info=True)
            prepared = [self._prepare_one(item) for item in _resolved(batch)]
        self._guard(prepared)
        return prepared

    def _prepare_one(self, item: AuditRecord | PreparedRecord) -> PreparedRecord:
        """Prepare one record without raising: fully, else untransformed (a transform
        bug), else in its safe form."""
        error: BaseException
        try:
            return self._prepare([item])[0]
        except Exception as exc:
            error = exc
        if self.transforms:
            try:
                return self._prepare_plain(item)
            except Exception as exc:
                error = exc
        return self._safe_prepared(item, f"could not be normalised: {error!r}")

    def _safe_prepared(self, item: _Item, reason: str) -> PreparedRecord:
        """``item`` in its safe form (:func:`.quarantine.safe_record`), redacted, unsealed.

        A record whose redaction fails even in its safe form keeps none of its JSON
        documents nor free texts: a secret never gets past a broken redactor."""
        if isinstance(item, DeferredRecords):  # pragma: no cover - resolved before
            item = AuditRecord(id=uuid.uuid4().hex, timestamp=dt.datetime.now(dt.UTC),
                               action="unknown", user_id="unknown")
        safe = safe_record(item, reason)
        if self.redactor is not None and not isinstance(item, PreparedRecord):
            try:
                safe = self.redactor(safe)
            except Exception:
                withheld = "<withheld: redaction failed>"
                safe = safe._replace(old_values=None, new_values=None, changes=None,
                                     error_message=withheld, user_agent=None,
                                     context={NORMALISATION_KEY: [
                                         {"field": "record", "kind": "withheld",
                                          "reason": reason[:500]}]})
        return safe_texts(safe)

    def _guard(self, prepared: list[PreparedRecord]) -> None:
        """Replace, before sealing, records the store would refuse for a value that
        normalisation does not bound (an out-of-range ``schema_version``): once sealed, a
        refused record would leave a hole in its chain. C-level passes over the column."""
        versions = list(map(_VERSION_OF, map(_RECORD, prepared)))
        if (set(map(type, versions)) <= {int} and versions
                and _VERSION_RANGE[0] <= min(versions) and max(versions) <= _VERSION_RANGE[1]):
            return
        for i, version in enumerate(versions):
            if (type(version) is not int or not _VERSION_RANGE[0] <= version <= _VERSION_RANGE[1]
                    ) and prepared[i].seq is None:
                prepared[i] = self._safe_prepared(
                    prepared[i], "schema_version out of the column's range")

    def _seal_ahead(self, prepared: list[PreparedRecord]) -> None:
        """Seal on the worker, so that the store stage only writes.

        Batches are sealed here in the order the store stage commits them. A sealer
        that cannot start (the store holding a named stream's head is down) leaves the
        batch unsealed: the store stage seals it inside its retry loop.
        """
        with contextlib.suppress(StoreError):
            self._seal_safely(prepared)

    def _seal_safely(self, prepared: list[PreparedRecord]) -> bool:
        """:meth:`_seal`, where a record a sealer cannot hash (a value its serialiser
        refuses) is found by halving the batch and sealed in its safe form; raises
        only :class:`StoreError` (the head of a named stream is unreadable)."""
        try:
            return self._seal(prepared)
        except StoreError:
            raise
        except Exception as exc:  # the sealer left its chain as it was (all or nothing)
            if len(prepared) == 1:
                prepared[0] = self._safe_prepared(prepared[0], f"could not be sealed: {exc!r}")
                try:
                    return self._seal(prepared)
                except StoreError:
                    raise
                except Exception:  # left unsealed: the store stage tries again
                    log_internal_error("seal", logging.ERROR,
                                       "audit record %s cannot be sealed", prepared[0].record.id,
                                       exc_info=True)
                    return True
            mid = len(prepared) // 2
            for start, end in ((0, mid), (mid, len(prepared))):
                part = prepared[start:end]
                self._seal_safely(part)
                prepared[start:end] = part
            return True

    def _write_prepared(self, prepared: list[PreparedRecord],
                        encoded: bytes | None = None) -> None:
        try:
            if not self._abandoned:
                self._write_batch(prepared, encoded)
        except BaseException as exc:  # the store thread never drops a batch either
            self._worker_failed("store", exc)
            self._rescue(prepared, exc)
        finally:
            with self._state_lock:
                self._inflight.pop(id(prepared), None)
                self._busy -= 1

    def _rescue(self, prepared: list[PreparedRecord], exc: BaseException) -> None:
        """Account for a batch whose write failed unexpectedly: the spool if it takes
        it (replayed with the usual care), else record by record; never raises."""
        try:
            if self._to_spool(prepared):
                self._schedule_replay(None)
                return
            rest, error = self._isolate(prepared, StoreError(repr(exc), transient=False))
            if rest:
                self._count_failed(rest, f"store unavailable: {error}", quarantine=False)
        except BaseException:
            log_internal_error("rescue", logging.ERROR,
                               "audit batch lost after an unexpected error", exc_info=True)
            self._count_failed(prepared, f"unexpected error: {exc!r}", quarantine=True)

    def _write_batch(self, prepared: list[PreparedRecord],
                     encoded: bytes | None = None) -> None:
        spool = self.spool
        # keep order: while records wait in the spool, new ones queue behind them
        if spool is not None and spool.pending() and self._to_spool(prepared):
            return
        attempt = 0
        while True:
            if self._abandoned:  # shutdown spooled this batch past its deadline
                return
            error = self._try_write(prepared, encoded)
            if error is None:
                return
            if not error.transient:  # a record refused for its content: find it
                prepared, error = self._isolate(prepared, error)
                if not prepared or error is None:
                    return
                encoded = None
            attempt += 1
            with self._state_lock:
                self._retried += 1
            self.metrics.retried()
            if self._to_spool(prepared):
                self._schedule_replay(error)
                return
            delay = self._backoff(attempt)
            log_internal_error(
                "store_retry", logging.WARNING,
                "audit store write failed (attempt %d, %d records kept, retrying in %.2fs): %s",
                attempt, len(prepared), delay, error,
            )
            if self._stop.wait(delay) and self._closed and self._past_deadline(attempt):
                kept = self._spool_on_exit(list(prepared))
                if len(prepared) - kept:
                    with self._state_lock:
                        self._failed += len(prepared) - kept
                    self.metrics.dropped(len(prepared) - kept, "shutdown")
                    logger.error("audit shutdown with the store unavailable: %d records "
                                 "lost", len(prepared) - kept)
                return

    def _try_write(self, prepared: list[PreparedRecord], encoded: bytes | None = None, *,
                   replay: bool = False) -> StoreError | None:
        """One attempt at :meth:`_write`: None once committed, else the store's error."""
        try:
            self._write(prepared, encoded=encoded, replay=replay)
        except StoreError as exc:
            return exc
        return None

    def _isolate(self, batch: list[PreparedRecord], error: StoreError, *,
                 replay: bool = False) -> tuple[list[PreparedRecord], StoreError | None]:
        """Write what the store takes of a batch it refused for its content.

        The batch is halved until the refused records stand alone (the good ones land
        a half at a time); each of those is retried in its safe form and, if refused
        even so, quarantined. Returns the records not dealt with because the store
        became unavailable meanwhile, and that error (``[], None`` when all are)."""
        if len(batch) == 1:
            return self._poison(batch[0], error, replay=replay)
        mid = len(batch) // 2
        halves = (batch[:mid], batch[mid:])
        for i, half in enumerate(halves):
            failure = self._try_write(half, replay=replay)
            if failure is None:
                continue
            if failure.transient:
                return [*half, *(halves[1] if i == 0 else [])], failure
            rest, failure = self._isolate(half, failure, replay=replay)
            if failure is not None:
                return [*rest, *(halves[1] if i == 0 else [])], failure
        return [], None

    def _poison(self, item: PreparedRecord, error: StoreError, *,
                replay: bool = False) -> tuple[list[PreparedRecord], StoreError | None]:
        """One record the store refused: store its safe form, else quarantine it.

        Every chain position spent on a record that is not stored (the original's, if it
        was sealed; the safe form's, if refused too) is explained by a quarantined record
        holding that stream and ``seq``."""
        rid = item.record.id
        if rid in self._dealt_ids:  # a spool segment replayed again: dealt with before
            return [], None
        sealed = item.seq is not None and bool(self.sealers)
        safe = self._safe_prepared(item, f"refused by the store: {error}")
        if sealed:
            # its chain position is spent: the safe form takes a new one, and the
            # original stays in the quarantine file (with its seq and hash) as the
            # explanation of the hole verify reports at that position
            note = {"field": "record", "kind": "resealed", "stream": item.stream,
                    "seq": item.seq, "hash": item.hash}
            context = dict(safe.record.context or {})
            context[NORMALISATION_KEY] = [*context.get(NORMALISATION_KEY, []), note]
            safe = safe_texts(safe.record._replace(context=context))
        attempt = [safe]
        failure = self._try_write(attempt, replay=replay)  # seals it in place
        if failure is not None and failure.transient:
            # the store is away: the safe form waits in the spool (or, live, in the
            # retry loop) in place of the refused original
            if self._to_spool(attempt):
                self._dealt(item, sealed, error)
                return [], failure if replay else None
            if replay:  # the segment is replayed again later, this record with it
                return [item], failure
            self._dealt(item, sealed, error)
            return attempt, failure
        kept = self._dealt(item, sealed, error)
        if failure is None:
            log_internal_error("store_reject", logging.WARNING,
                               "audit store refused record %s; stored in its safe form: %s",
                               rid, error)
            return [], None
        if attempt[0].seq is not None:  # the safe form's position is spent too
            self._keep_quarantined(attempt[0], f"safe form of {rid} refused too: {failure}")
        self._count_failed([item], f"refused by the store, also in its safe form: {failure}",
                           quarantine=not sealed, kept=int(kept))
        return [], None

    def _dealt(self, item: PreparedRecord, sealed: bool, error: StoreError) -> bool:
        """Remember ``item`` as dealt with; a sealed one is quarantined (its hole).
        Returns whether it was quarantined."""
        self._dealt_ids.append(item.record.id)
        return sealed and self._keep_quarantined(
            item, f"sealed record refused by the store: {error}")

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

    def _backoff(self, attempt: int) -> float:
        delay: float = min(self.config.retry_max_backoff, 0.05 * 2.0 ** min(attempt, 20))
        return delay * random.uniform(0.5, 1.0)

    def _to_spool(self, prepared: list[PreparedRecord]) -> bool:
        spool = self.spool
        if spool is None or self._abandoned:
            return False
        try:
            if spool.append(prepared):
                self._count_spooled(len(prepared))
                return True
            log_internal_error(f"spool_full:{id(self)}", logging.ERROR,
                               "audit spool %s is full (%d bytes): keeping the batch in memory",
                               spool.directory, spool.max_bytes)
        except OSError as exc:
            log_internal_error(f"spool_error:{id(self)}", logging.ERROR,
                               "audit spool %s unwritable: %s", spool.directory, exc)
        except Exception as exc:  # a value the spool's encoder refuses: not spooled
            log_internal_error(f"spool_encode:{id(self)}", logging.ERROR,
                               "audit spool cannot encode a batch: %r", exc)
        return False

    def _schedule_replay(self, exc: BaseException | None) -> None:
        self._replay_attempt += 1
        delay = self._backoff(self._replay_attempt)
        self._replay_at = time.monotonic() + delay
        if exc is not None:
            self._store_failing = True
            log_internal_error(
                "store_down", logging.WARNING,
                "audit store unavailable, spooling to %s (next attempt in %.2fs): %s",
                self.spool.directory if self.spool else "?", delay, exc,
            )

    def _maybe_replay(self) -> None:
        spool = self.spool
        if (spool is None or self._abandoned or not spool.pending()
                or time.monotonic() < self._replay_at):
            self._release_markers()
            return
        self._store.wait()  # replayed records go after the batch in flight
        self._replaying = True
        try:
            self._replay_spool(spool)
        finally:
            self._replaying = False
        self._release_markers()

    def _replay_spool(self, spool: Spool) -> None:
        """Write spooled segments oldest first; stop at the first transient failure
        (retry later). A record the store refuses for its content never blocks the
        spool: it is stored in its safe form or quarantined, and replay goes on."""
        spool.rescan()
        while True:
            if self._abandoned:
                return
            segment = spool.oldest()
            if segment is None:
                self._replay_attempt = 0
                return
            count = 0
            batch: list[PreparedRecord] = []
            for prepared in spool.read(segment):
                batch.append(prepared)
                if len(batch) >= self._batch_size:
                    error = self._replay_batch(batch)
                    if error is not None:
                        self._replay_failed(error)
                        return
                    count += len(batch)
                    batch = []
            if batch:
                error = self._replay_batch(batch)
                if error is not None:
                    self._replay_failed(error)
                    return
                count += len(batch)
            if self._abandoned:  # shutdown may have released the segment: keep the file
                return
            spool.done(segment, count)

    def _replay_batch(self, batch: list[PreparedRecord]) -> StoreError | None:
        """Write one batch read from the spool; the transient error that stopped it."""
        if self._abandoned:
            return StoreError("the trail was shut down", transient=True)
        try:
            self._guard(batch)  # spooled unsealed by an older process: before it is sealed
            error = self._try_write(batch, replay=True)
            if error is None or error.transient:
                return error
            _rest, error = self._isolate(batch, error, replay=True)
        except Exception as exc:  # unexpected: counted, and replay backs off as for an outage
            self._worker_failed("worker", exc)
            return StoreError(f"replay failed: {exc!r}")
        return error

    def _replay_failed(self, error: StoreError) -> None:
        with self._state_lock:
            self._retried += 1
        self.metrics.retried()
        self._schedule_replay(error)

    def _past_deadline(self, attempt: int) -> bool:
        # during shutdown keep retrying only briefly: shutdown() itself is deadline-bound
        return attempt >= 3

    def _prepare_plain(self, item: AuditRecord | PreparedRecord) -> PreparedRecord:
        if isinstance(item, PreparedRecord):
            return item
        if self.redactor is not None:
            item = self.redactor(item)
        return PreparedRecord(*normalise(item, max_record_bytes=self.config.max_record_bytes))

    def _prepare(self, records: Sequence[_Item]) -> list[PreparedRecord]:
        cap = self.config.max_record_bytes
        redactor = self.redactor
        resolved = _resolved(records)
        if not self.transforms and {AuditRecord} == set(map(type, resolved)):
            # the common batch: redaction and normalisation checked column by column
            plain: list[AuditRecord] = resolved  # type: ignore[assignment]
            if redactor is not None and isinstance(redactor, Redactor):
                plain = redactor.redact_batch(plain)
            elif redactor is not None:
                plain = [redactor(record) for record in plain]
            texts = plain_texts(plain, cap)
            if texts is not None:
                # tuple.__new__ directly: the NamedTuple's __new__ is a Python-level call
                return list(map(tuple.__new__, repeat(PreparedRecord),
                                zip(plain, texts, *_NO_CHAIN, strict=False)))
            resolved = plain  # type: ignore[assignment]
            redactor = None  # done above
        out: list[PreparedRecord] = []
        for record in resolved:
            if isinstance(record, PreparedRecord):  # journalled or spooled: already done
                out.append(record)
                continue
            if redactor is not None:
                record = redactor(record)
            for transform in self.transforms:
                record = transform(record)
            out.append(PreparedRecord(*normalise(record, max_record_bytes=cap)))
        return out

    def _seal(self, prepared: list[PreparedRecord]) -> bool:
        """Run the sealers on the records without a chain position, in place; return
        whether any record was sealed.

        A record sealed before (then spooled or retried) keeps its ``seq``/``hash``.
        """
        if not self.sealers or None not in map(_SEQ, prepared):  # all sealed already
            return False
        todo = [i for i, p in enumerate(prepared) if p.seq is None]
        batch = [prepared[i] for i in todo]
        for sealer in self.sealers:
            batch = sealer(batch)
        for i, sealed in zip(todo, batch, strict=True):
            prepared[i] = sealed
        return True

    def _write(self, prepared: list[PreparedRecord], *, replay: bool = False,
               encoded: bytes | None = None) -> None:
        with self._write_lock:
            # in place: a retry or the spool keeps the chain position
            if self._seal_safely(prepared):
                encoded = None  # rows changed since they were encoded
            started = time.perf_counter()
            if encoded is None:
                self.writer.write(prepared)
            else:
                self.writer.write(prepared, encoded=encoded)
            self._wrote(prepared, time.perf_counter() - started, replay=replay)

    def _wrote(self, prepared: list[PreparedRecord], elapsed: float, *,
               replay: bool = False) -> None:
        """Count a committed batch, then tell the journal and the post-write hooks."""
        self._store_failing = False
        with self._state_lock:
            self._written += len(prepared)
            if replay:
                self._replayed += len(prepared)
        self.metrics.written(len(prepared), elapsed)
        if replay:
            self.metrics.replayed(len(prepared))
        if self.journal is not None:
            self.journal.committed(p.record.id for p in prepared)
        for hook in self.on_written:
            try:
                hook(prepared)
            except BaseException as exc:  # the batch is committed: never written again
                if (isinstance(exc, KeyboardInterrupt | SystemExit)
                        and threading.current_thread() is threading.main_thread()):
                    raise  # a sync write on the main thread: the caller's to handle
                with self._state_lock:
                    self._restarts += 1
                self.metrics.worker_restarted()
                log_internal_error("on_written", logging.ERROR,
                                   "audit post-write hook %r failed", hook, exc_info=True)


_SEQ = operator.itemgetter(3)  # PreparedRecord.seq
_RECORD = operator.itemgetter(0)  # PreparedRecord.record
_VERSION_OF = operator.itemgetter(AuditRecord._fields.index("schema_version"))


@functools.lru_cache(maxsize=16)
def _chunks(n: int) -> tuple[tuple[int, int], ...]:
    """``(start, end)`` of the chunks a batch of ``n`` is prepared in."""
    bounds = [0, *range(_FIRST_CHUNK, n, _CHUNK), n] if n > _FIRST_CHUNK else [0, n]
    return tuple(pairwise(bounds))

#: The chain fields of an unsealed PreparedRecord, as columns for zip().
_NO_CHAIN = (repeat(None),) * 7


def _segments_of(holder: Spool | Journal | None) -> list[Any]:
    if holder is None:
        return []
    if isinstance(holder, Spool):
        current = [holder._current] if holder._current is not None else []
        return [*holder._ready, *current]
    return list(holder._segments)


def _resolved(items: Sequence[_Item]) -> list[AuditRecord | PreparedRecord]:
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
