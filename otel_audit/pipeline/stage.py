"""The pipeline's second stage: sealed batches written one at a time, in order.

Driven by the worker (:mod:`.worker`). With a thread of its own (an exporter whose
``own_thread`` is true), the worker prepares and seals batch *n + 1* while this thread
commits batch *n*; without (the store exporters), each batch is written on the worker
right after it is sealed: one thread, no hand-off per batch, the database's own work
(SQLite's step, PostgreSQL's server) running without the GIL while the application's
threads carry on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from .._internal import log_internal_error, suppress_instrumentation

__all__ = ["StoreStage"]

#: a wait for a free slot longer than this is more than taking the lock: the worker
#: had to wait for the store, so the store is the slower stage
_STORE_BOUND = 0.0002


class StoreStage:
    """The second pipeline stage: batches written one at a time on their own thread
    (``threaded=False``: on the thread calling :meth:`run`, each before it returns).

    While it commits batch *n* (the driver lets go of the GIL for the database's own
    work: SQLite's step, PostgreSQL's server), the worker redacts, normalises and seals
    the next ones. Up to ``depth`` sealed batches may wait behind the one being written,
    so the store thread goes from one to the next without waiting for the worker;
    ``run`` blocks while ``depth`` are waiting. Batches are committed one at a time, in
    the order they were sealed.

    Two threads that both want the GIL hand it over slowly: a thread coming back from
    the database waits for the other to be preempted (the interpreter's switch
    interval). So the worker calls :meth:`pause` between chunks of a batch, which lets
    a store thread back in. A pause is not free (the sleep's timer slack, and while the
    application's threads are busy in Python it hands them the GIL for their switch
    interval too), so the worker pauses only when the store thread likely wants the
    GIL: while the store is the slower stage (the worker had to wait for a slot; a
    driver such as psycopg's COPY comes back for the GIL between its steps), after
    every chunk; otherwise (SQLite: one call to the database per batch, quicker than
    the worker's share) only once the running job is likely back from the database —
    no sooner after its start than the quickest of the recent jobs took.
    """

    def __init__(self, depth: int = 1, *, threaded: bool = True) -> None:
        #: whether jobs run on the stage's own thread; False: on the thread calling
        #: :meth:`run`, one after the other (what :meth:`stop` leads to as well)
        self.threaded = threaded
        self._depth = depth  # sealed jobs that may wait behind the running one
        self._cond = threading.Condition(threading.Lock())
        self._waiting: deque[Callable[[], None]] = deque()  # sealed, behind the running job
        self._running = False
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._back_at = 0.0  # when the running job is likely back from the database
        self._recent: deque[float] = deque(maxlen=16)  # durations of recent jobs
        self._eager = True  # the worker waited for a slot: pause after every chunk

    def run(self, job: Callable[[], None]) -> None:
        """Queue ``job`` behind the running one (blocks while ``depth`` jobs are waiting);
        not threaded: run it now, on the calling thread."""
        if not self.threaded:
            self._inline(job)
            return
        with self._cond:
            if len(self._waiting) >= self._depth:
                waiting = time.perf_counter()
                self._cond.wait_for(lambda: len(self._waiting) < self._depth)
                self._eager = time.perf_counter() - waiting > _STORE_BOUND
            else:
                self._eager = False
            if self._stopped:  # after stop(), jobs run on the calling thread
                inline = True
            else:
                inline = False
                self._waiting.append(job)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, daemon=True,
                                                    name="otel-audit-store")
                    self._thread.start()
                self._cond.notify_all()
        if inline:
            job()

    def _inline(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException:  # the job handles its own errors; a last resort
            log_internal_error("store_stage", logging.ERROR,
                               "audit store stage failed", exc_info=True)

    def pause(self) -> None:
        """Let the store thread have the GIL if it is likely waiting for it: a job about
        to start, or one probably back from the database."""
        if self._running:
            wants = self._eager or time.perf_counter() >= self._back_at
        else:
            wants = bool(self._waiting)  # a job about to start
        if wants:
            time.sleep(0)

    def _idle(self) -> bool:
        return not self._waiting and not self._running

    def idle(self) -> bool:
        """Whether no job is waiting or running."""
        with self._cond:
            return self._idle()

    def wait(self) -> None:
        """Return once no job is waiting or running."""
        with self._cond:
            self._cond.wait_for(self._idle)

    def stop(self) -> None:
        """Finish the jobs queued, then end the thread; later jobs run inline."""
        with self._cond:
            self._cond.wait_for(self._idle)
            self._stopped = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        with suppress_instrumentation():
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: bool(self._waiting) or self._stopped)
                    if not self._waiting:
                        return
                    job = self._waiting.popleft()
                    self._running = True
                    started = time.perf_counter()
                    self._back_at = started + min(self._recent, default=0.0)
                    self._cond.notify_all()
                try:
                    job()
                except BaseException:  # the job handles its own errors; a last resort
                    log_internal_error("store_stage", logging.ERROR,
                                       "audit store stage failed", exc_info=True)
                finally:
                    with self._cond:
                        self._recent.append(time.perf_counter() - started)
                        self._running = False
                        self._cond.notify_all()
