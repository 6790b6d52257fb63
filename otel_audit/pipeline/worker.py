"""The worker thread: drains the queue a batch at a time and hands each batch, prepared
and sealed (on PostgreSQL with its COPY text), to the store stage (:mod:`.stage`): for
the stores, written on this thread before the next batch is taken; for an exporter
with a thread of its own, written there while this thread prepares the next batch.

Neither thread ever stops on an error: each catches anything, counts it
(``worker_restarts``) and accounts for the records it held.
"""

from __future__ import annotations

import functools
import logging
import operator
import threading
import time
from itertools import pairwise

from .._internal import log_internal_error, suppress_instrumentation
from ..errors import StoreError
from ..prepared import PreparedRecord
from ..record import AuditRecord
from .items import FlushMarker, Item, resolve_items
from .retry import RetryPolicy

__all__ = ["PipelineWorker"]

_SEQ = operator.itemgetter(3)  # PreparedRecord.seq
_CHUNK = 64  # records prepared between two pauses for the store stage: short, so a store
#: thread back from the database soon gets the GIL
_FIRST_CHUNK = 8
_ORPHAN_SCAN_INTERVAL = 30.0  # seconds between looks for spool segments of dead processes


class PipelineWorker(RetryPolicy):
    """The worker thread and the hand-over to the store stage (a layer of the pipeline)."""

    def _start_worker(self) -> None:
        with self._state_lock:
            if self._worker is not None or self._closed:
                return
            worker = threading.Thread(target=self._run, name="otel-audit-writer", daemon=True)
            self._worker = worker
        worker.start()

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
            batch: list[Item] = []
            markers: list[FlushMarker] = []
            with self._state_lock:
                self._busy += 1  # before taking anything: flush() must see it in flight
            while queue and len(batch) < self._batch_size:
                item = queue.popleft()
                if isinstance(item, FlushMarker):
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

    def _hand_over(self, batch: list[Item]) -> None:
        """Prepare and seal ``batch``, then queue its write on the store stage. Whatever
        goes wrong on the way, its records are written, spooled or counted."""
        key = id(batch)
        try:
            prepared: list[PreparedRecord] = []
            done = 0  # items of ``batch`` in ``prepared``
            if not self._store.threaded:
                committed, prepared, done = self._stream_batch(batch)
                if committed:
                    with self._state_lock:
                        self._inflight.pop(key, None)
                        self._busy -= 1
                    return
            if self._store.threaded:
                # prepared and sealed while the store thread commits the previous
                # batch, in chunks: between them a store thread back from the
                # database gets the GIL (the first chunk is short: a write just
                # handed over soon comes back from its first round trip)
                for start, end in _chunks(len(batch)):
                    part = self._prepare_batch(batch[start:end])
                    self._seal_ahead(part)
                    prepared += part
                    self._store.pause()
            elif done < len(batch):
                rest = self._prepare_batch(batch[done:])
                self._seal_ahead(rest)
                prepared += rest
            encoded = self._encode(prepared)  # the store stage only sends it
        except BaseException as exc:  # record by record, unsealed: the store stage seals
            self._worker_failed("worker", exc)
            prepared = [self._salvage(item, exc) for item in resolve_items(batch)]
            encoded = None
        with self._state_lock:
            if self._abandoned:  # shutdown spooled the batch already
                self._inflight.pop(key, None)
                self._busy -= 1
                return
            self._inflight.pop(key, None)
            self._inflight[id(prepared)] = prepared
        self._store.run(functools.partial(self._write_prepared, prepared, encoded))

    def _stream_batch(self, batch: list[Item]) -> tuple[bool, list[PreparedRecord], int]:
        """Prepare, seal and send ``batch`` a chunk at a time on one write the store
        commits at the end (:meth:`~otel_audit.exporters.store.StoreExporter.stream`),
        so that the database works on the first chunks while the next are prepared.

        Returns whether it committed, the records prepared (sealed) and how many items
        of ``batch`` they are. Not committed — the store has no such write, records
        wait in the spool, the store is failing, or the write failed: nothing of it
        stored — the caller prepares the rest and writes them the usual way (retries,
        spool, isolation), the records prepared here keeping their chain positions.
        """
        prepared: list[PreparedRecord] = []
        spool = self.spool
        if self._abandoned or self._store_failing or (spool is not None and spool.pending()):
            return False, prepared, 0
        with self._write_lock:  # sealing and committing one step, as in _write
            try:
                stream = self.writer.stream()
            except Exception as exc:  # the usual write reports and retries it
                self._stream_failed(exc)
                return False, prepared, 0
            if stream is None:
                return False, prepared, 0
            started = time.perf_counter()
            done = 0
            for start, end in _chunks(len(batch)):
                try:
                    part = self._prepare_batch(batch[start:end])
                    self._seal_ahead(part)
                except BaseException as exc:  # the caller salvages the batch
                    stream.abort(exc)
                    raise
                prepared += part
                done = end
                if self.sealers and None in map(_SEQ, part):
                    # a chain's head was unreadable: the usual write seals it, retrying
                    stream.abort(StoreError("a record is not sealed"))
                    return False, prepared, done
                try:
                    stream.send(part)
                except BaseException as exc:
                    stream.abort(exc)
                    if not isinstance(exc, Exception):
                        raise
                    self._stream_failed(exc)
                    return False, prepared, done
            try:
                stream.commit(prepared)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    raise
                self._stream_failed(exc)
                return False, prepared, done
            self._wrote(prepared, time.perf_counter() - started)
        return True, prepared, done

    def _stream_failed(self, exc: Exception) -> None:
        """A streamed write failed: counted as an attempt when the store's state was the
        cause (the batch is written again at once, the usual way); a refused value is
        not (the usual write finds it, or merges a replay's rows already stored)."""
        if isinstance(exc, StoreError) and not exc.transient:
            return
        with self._state_lock:
            self._retried += 1
        self.metrics.retried()
        log_internal_error("store_retry", logging.WARNING,
                           "audit store write failed (%s); writing the batch again", exc)

    def _salvage(self, item: AuditRecord | PreparedRecord, exc: BaseException) -> PreparedRecord:
        """One record of a batch whose preparation failed: prepared on its own."""
        if isinstance(item, PreparedRecord):  # journalled: prepared (and maybe sealed)
            return item
        try:
            return self._prepare_one(item)
        except BaseException:
            return self._safe_prepared(item, f"worker error: {exc!r}")

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

    def _done_busy(self) -> None:
        with self._state_lock:
            self._busy -= 1


@functools.lru_cache(maxsize=16)
def _chunks(n: int) -> tuple[tuple[int, int], ...]:
    """``(start, end)`` of the chunks a batch of ``n`` is prepared in."""
    bounds = [0, *range(_FIRST_CHUNK, n, _CHUNK), n] if n > _FIRST_CHUNK else [0, n]
    return tuple(pairwise(bounds))
