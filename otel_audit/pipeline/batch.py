"""The batching engine: a bounded in-memory queue drained by one background worker.

Shape borrowed from the OpenTelemetry SDK's batch processors (a queue, a worker woken
when a batch fills or the interval passes, deadline-bound shutdown, re-init after
fork), with two differences that matter for an audit trail: a full queue makes the
caller wait briefly before anything is dropped, and a failed write is *retried* with
exponential back-off and jitter while the batch is kept, never thrown away.

Work on the caller's thread (:meth:`BatchPipeline.submit`) is an ``append`` and a
length check. Normalisation, chaining and I/O happen on the worker.
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import random
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._internal import log_internal_error, logger, suppress_instrumentation
from ..config import AuditConfig
from ..errors import AuditWriteError, StoreError
from ..record import AuditRecord, normalise
from ..store.writer import PreparedRecord, StoreWriter

__all__ = ["AuditStats", "BatchPipeline", "BatchSealer", "RecordTransform", "WrittenHook"]

#: Runs on each record before normalisation (redaction, enrichment).
RecordTransform = Callable[[AuditRecord], AuditRecord]
#: Runs on each normalised batch before it is written (integrity chaining).
BatchSealer = Callable[[list[PreparedRecord]], list[PreparedRecord]]
#: Runs after a batch is committed (metrics, OpenTelemetry log emission).
WrittenHook = Callable[[Sequence[PreparedRecord]], None]


@dataclass(frozen=True, slots=True)
class AuditStats:
    """Counters of one trail since it was created (or since fork, in a child)."""

    enqueued: int
    written: int
    retried: int
    failed: int
    dropped: int
    queue_depth: int


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
    ) -> None:
        self.config = config
        self.writer = writer
        self.transforms = list(transforms)
        self.sealers = list(sealers)
        self.on_written = list(on_written)
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

    def _finalise_on_exit(self) -> None:
        multiprocessing.util.Finalize(self, self.shutdown, exitpriority=100)

    def _init_state(self) -> None:
        self._queue: deque[AuditRecord | _FlushMarker] = deque()
        self._wake = threading.Event()
        self._space = threading.Condition(threading.Lock())
        self._stop = threading.Event()
        self._write_lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._drained = 0
        self._written = 0
        self._retried = 0
        self._failed = 0
        self._dropped = 0
        self._sync_enqueued = 0

    def _after_fork_in_child(self) -> None:
        # The parent writes what it had queued; the child starts empty with its own
        # worker, locks and connections, so no record is ever written twice.
        self._init_state()
        self.writer.dispose(close=False)

    # ------------------------------------------------------------------ caller side

    def submit(self, record: AuditRecord) -> bool:
        """Hand ``record`` to the worker. Returns ``False`` if it had to be dropped."""
        queue = self._queue
        if len(queue) >= self._queue_size and not self._wait_for_room():
            return self._drop(record)
        queue.append(record)
        if len(queue) >= self._batch_size:
            self._wake.set()
        if self._worker is None:
            self._start_worker()
        return True

    def _wait_for_room(self) -> bool:
        if self._closed:
            return False
        self._wake.set()
        if self._worker is None:
            self._start_worker()
        with self._space:
            return self._space.wait_for(lambda: len(self._queue) < self._queue_size,
                                        self.config.queue_full_timeout)

    def _drop(self, record: AuditRecord) -> bool:
        with self._state_lock:
            self._dropped += 1
            dropped = self._dropped
        log_internal_error(
            f"queue_full:{id(self)}", logging.ERROR,
            "audit queue full (%d records): dropped record %s (action=%s); %d dropped so far",
            self._queue_size, record.id, record.action, dropped,
        )
        return False

    def _start_worker(self) -> None:
        with self._state_lock:
            if self._worker is not None or self._closed:
                return
            worker = threading.Thread(target=self._run, name="otel-audit-writer", daemon=True)
            self._worker = worker
        worker.start()

    def write_now(self, records: Sequence[AuditRecord]) -> None:
        """Write ``records`` on the caller's thread (``sync`` mode). Raises on failure."""
        with self._state_lock:
            self._sync_enqueued += len(records)
        try:
            with suppress_instrumentation():
                self._write(self._prepare(records))
        except StoreError as exc:
            with self._state_lock:
                self._failed += len(records)
            raise AuditWriteError(str(exc)) from exc

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted before the call is committed."""
        if not self._queue or self._worker is None:
            with self._write_lock:  # a batch may be in flight
                return not self._queue
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush (bounded by ``timeout``), stop the worker and release connections."""
        if self._closed:
            return True
        deadline = self.config.shutdown_timeout if timeout is None else timeout
        flushed = self.flush(deadline)
        self._closed = True
        self._stop.set()
        self._wake.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(deadline)
        remaining = sum(1 for item in self._queue if isinstance(item, AuditRecord))
        if remaining:
            with self._state_lock:
                self._failed += remaining
            logger.error("audit shutdown: %d records were not written before the deadline",
                         remaining)
            flushed = False
        self.writer.dispose()
        return flushed

    def stats(self) -> AuditStats:
        """Return the current counters."""
        depth = sum(1 for item in list(self._queue) if isinstance(item, AuditRecord))
        with self._state_lock:
            return AuditStats(
                enqueued=self._drained + depth + self._sync_enqueued,
                written=self._written,
                retried=self._retried,
                failed=self._failed,
                dropped=self._dropped,
                queue_depth=depth,
            )

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        with suppress_instrumentation():
            while True:
                self._wake.wait(self.config.flush_interval)
                self._wake.clear()
                self._drain()
                if self._stop.is_set():
                    self._drain()
                    return

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch: list[AuditRecord] = []
            markers: list[_FlushMarker] = []
            while queue and len(batch) < self._batch_size:
                item = queue.popleft()
                if isinstance(item, _FlushMarker):
                    markers.append(item)
                    break
                batch.append(item)
            with self._space:
                self._space.notify_all()
            if batch:
                with self._state_lock:
                    self._drained += len(batch)
                self._write_with_retry(batch)
            for marker in markers:
                marker.done.set()
            if self._stop.is_set() and self._closed and not batch and not markers:
                return

    def _write_with_retry(self, batch: list[AuditRecord]) -> None:
        try:
            prepared = self._prepare(batch)
        except Exception:  # a transform bug must not lose the batch: write it untransformed
            log_internal_error("prepare", logging.ERROR,
                               "audit record preparation failed", exc_info=True)
            prepared = [PreparedRecord(*normalise(r, max_record_bytes=self.config.max_record_bytes))
                        for r in batch]
        attempt = 0
        while True:
            try:
                self._write(prepared)
                return
            except StoreError as exc:
                if not exc.transient:
                    self._write_one_by_one(prepared)
                    return
                attempt += 1
                with self._state_lock:
                    self._retried += 1
                delay = min(self.config.retry_max_backoff, 0.05 * (2 ** min(attempt, 20)))
                delay *= random.uniform(0.5, 1.0)
                log_internal_error(
                    "store_retry", logging.WARNING,
                    "audit store write failed (attempt %d, %d records kept, retrying in %.2fs): %s",
                    attempt, len(prepared), delay, exc,
                )
                if self._stop.wait(delay) and self._closed and self._past_deadline(attempt):
                    with self._state_lock:
                        self._failed += len(prepared)
                    logger.error("audit shutdown with the store unavailable: %d records lost",
                                 len(prepared))
                    return

    def _past_deadline(self, attempt: int) -> bool:
        # during shutdown keep retrying only briefly: shutdown() itself is deadline-bound
        return attempt >= 3

    def _write_one_by_one(self, prepared: list[PreparedRecord]) -> None:
        """Isolate records the store rejects permanently so the rest of the batch lands."""
        for item in prepared:
            try:
                self._write([item])
            except StoreError as exc:
                with self._state_lock:
                    self._failed += 1
                log_internal_error("store_reject", logging.ERROR,
                                   "audit store rejected record %s: %s", item.record.id, exc)

    def _prepare(self, records: Sequence[AuditRecord]) -> list[PreparedRecord]:
        cap = self.config.max_record_bytes
        out: list[PreparedRecord] = []
        for record in records:
            for transform in self.transforms:
                record = transform(record)
            out.append(PreparedRecord(*normalise(record, max_record_bytes=cap)))
        return out

    def _write(self, prepared: list[PreparedRecord]) -> None:
        with self._write_lock:
            batch = prepared
            for sealer in self.sealers:
                batch = sealer(batch)
            self.writer.write(batch)
            with self._state_lock:
                self._written += len(batch)
        for hook in self.on_written:
            try:
                hook(batch)
            except Exception:
                log_internal_error("on_written", logging.ERROR,
                                   "audit post-write hook %r failed", hook, exc_info=True)
