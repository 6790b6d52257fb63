"""Retry, spool, replay and journal policy; records the store refuses.

* a batch the store refuses for a transient reason is never thrown away: it goes to
  the on-disk spool (:mod:`.spool`) and is replayed, in order, once the store
  answers; while anything is spooled, new batches queue up behind it in the spool;
  without a spool (or with it full) the batch is retried with backoff;
* a record the store refuses for its content is isolated by halving its batch, then
  stored in its safe form or quarantined (:mod:`.quarantine`), live and on spool
  replay alike;
* ``durable`` records wait in the journal (:mod:`.journal`) until committed; journals
  left by dead processes are replayed by the next trail on the same directory.
"""

from __future__ import annotations

import logging
import random
import time

from .._internal import log_internal_error, logger
from ..errors import StoreError
from ..prepared import PreparedRecord
from ..record import NORMALISATION_KEY
from .items import Item
from .journal import Journal
from .quarantine import safe_texts
from .spool import Spool
from .writing import StoreWrites

__all__ = ["RetryPolicy"]


class RetryPolicy(StoreWrites):
    """What a failed write leads to (a layer of the pipeline)."""

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

    def _write_batch(self, prepared: list[PreparedRecord],
                     encoded: bytes | None = None) -> None:
        spool = self.spool
        # keep order: while records wait in the spool, new ones queue behind them
        if spool is not None and spool.pending() and self._to_spool(prepared):
            return
        key = id(prepared)  # as registered in flight (isolation may narrow the list)
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
                with self._state_lock:  # shutdown's _abandon may have taken this batch
                    if key in self._abandoned_batches:  # it spooled or counted it already
                        return
                    self._inflight.pop(key, None)  # ours to account for, not _abandon's
                kept = self._spool_on_exit(list(prepared))
                if len(prepared) - kept:
                    with self._state_lock:
                        self._failed += len(prepared) - kept
                    self.metrics.dropped(len(prepared) - kept, "shutdown")
                    logger.error("audit shutdown with the store unavailable: %d records "
                                 "lost", len(prepared) - kept)
                return

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

    def _backoff(self, attempt: int) -> float:
        delay: float = min(self.config.retry_max_backoff, 0.05 * 2.0 ** min(attempt, 20))
        return delay * random.uniform(0.5, 1.0)

    def _past_deadline(self, attempt: int) -> bool:
        # during shutdown keep retrying only briefly: shutdown() itself is deadline-bound
        return attempt >= 3

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

    def _spool_on_exit(self, items: list[Item]) -> int:
        """Move what is left in memory to the spool; return how many were kept."""
        spool = self.spool
        journalled = sum(1 for item in items if self._in_journal(item))
        if spool is None or spool.closed:  # closed: records made after shutdown
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

    def _in_journal(self, item: Item) -> bool:
        return self.journal is not None and isinstance(item, PreparedRecord)

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

    def _release_markers(self) -> None:
        if self._waiting and (self.spool is None or not self.spool.pending()):
            waiting, self._waiting = self._waiting, []
            for marker in waiting:
                marker.done.set()
