"""The state every layer of :class:`~otel_audit.pipeline.batch.BatchPipeline` shares.

The pipeline is one object built in layers, one module per job, each layer a class
deriving from the one below (so no module imports one above it):

=================  ==========================================================
``state``          settings, queue, locks, counters, spool/journal/quarantine; fork
``stats``          :class:`AuditStats` and the counting of what happened to records
``prepare``        redaction, normalisation, sealing (on the worker or the caller)
``writing``        one attempt at committing a batch, and what follows a commit
``retry``          retry, spool, replay and journal policy; refused records
``worker``         the worker thread: drains the queue, hands batches to the store stage
``lifecycle``      flush and shutdown, within their deadlines
``batch``          the caller's side: submit, backpressure, overflow, sync writes
=================  ==========================================================
"""

from __future__ import annotations

import multiprocessing.util
import os
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..config import AuditConfig
from ..metrics import PipelineMetrics
from ..store.writer import StoreWriter
from .items import BatchSealer, FlushMarker, Item, RecordTransform, WrittenHook
from .journal import Journal
from .quarantine import Quarantine, quarantine_dir_for
from .spool import Spool
from .stage import StoreStage

__all__ = ["PipelineState"]

#: sealed batches that may wait behind the one being written when the store stage has
#: a thread of its own: the worker seals ahead while the application's threads leave
#: it the GIL, instead of blocking until the store takes the next one
_STORE_DEPTH = 4
#: IDs of refused records remembered, so a spool segment replayed again after a
#: transient failure does not store (or count) the same record twice
_DEALT_IDS = 4096


class PipelineState:
    """Settings and shared state of a pipeline (see the module's docstring)."""

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
        # the stage lists last seen by own_code_only(), and its answer for them
        self._stages_seen: tuple[list[Any], list[Any], list[Any], bool] | None = None
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
        multiprocessing.util.register_after_fork(self, PipelineState._finalise_on_exit)
        # a durable trail adopts journals left by dead processes on first use (first
        # record, flush or worker start) — after the trail has installed its sealers
        self._durable = config.mode == "durable"
        self._journal_lock = threading.Lock()

    # provided by the layers above (batch, lifecycle), called from below
    def submit(self, record: Item) -> bool:
        """Hand ``record`` to the worker (:meth:`.batch.BatchPipeline.submit`)."""
        raise NotImplementedError

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush and stop (:meth:`.lifecycle.PipelineLifecycle.shutdown`)."""
        raise NotImplementedError

    def _finalise_on_exit(self) -> None:
        multiprocessing.util.Finalize(self, self.shutdown, exitpriority=100)

    def _init_state(self) -> None:
        self._queue: deque[Item | FlushMarker] = deque()
        self._wake = threading.Event()
        self._space = threading.Condition(threading.Lock())
        self._stop = threading.Event()
        self._write_lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._store = StoreStage(_STORE_DEPTH, threaded=self.writer.own_thread)
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
        #: keys of the in-flight batches shutdown's deadline spooled or counted: their
        #: store thread must not account for them a second time
        self._abandoned_batches: set[int] = set()
        #: set by a shutdown past its deadline: what was in flight is in the spool, so
        #: the worker and store threads write nothing more
        self._abandoned = False
        self._replaying = False  # the worker is writing spooled records
        self._waiting: list[FlushMarker] = []  # flushes waiting for the spool to drain
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
            if holder is not None:
                holder.release_after_fork()
        if self.quarantine is not None:
            self.quarantine.close()
        self._init_state()
        self.writer.dispose(close=False)

    def _queue_depth(self) -> int:
        return sum(1 for item in list(self._queue) if not isinstance(item, FlushMarker))

    def _spool_bytes(self) -> int:
        return self.spool.size if self.spool is not None else 0

