"""One attempt at committing a batch, and what follows a commit.

The write lock makes sealing and committing one step: batches are committed in the
order their chain positions were given. After a commit the journal forgets the
records and the post-write hooks run (a hook's failure never writes a batch twice).
"""

from __future__ import annotations

import logging
import threading
import time

from .._internal import log_internal_error
from ..errors import StoreError
from ..prepared import PreparedRecord
from .prepare import Preparation

__all__ = ["StoreWrites"]


class StoreWrites(Preparation):
    """Committing batches to the writer (a layer of the pipeline)."""

    def _try_write(self, prepared: list[PreparedRecord], encoded: bytes | None = None, *,
                   replay: bool = False) -> StoreError | None:
        """One attempt at :meth:`_write`: None once committed, else the store's error."""
        try:
            self._write(prepared, encoded=encoded, replay=replay)
        except StoreError as exc:
            return exc
        return None

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
        if not self.own_code_only():
            self._let_go(prepared)  # an application's stage sees the records
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

    def _encode(self, prepared: list[PreparedRecord]) -> bytes | None:
        try:
            return self.writer.encode(prepared)
        except Exception:  # the writer's own fallback failed: the store stage encodes
            return None
