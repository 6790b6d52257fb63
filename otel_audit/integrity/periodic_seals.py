"""A trail's own seals: its stream's head sealed every ``seal_interval`` seconds while it
writes, and once more at shutdown (:class:`PeriodicSeals`, installed by
:func:`install_seals` as a post-write hook of the trail's pipeline). Seals themselves,
their chain and their checks: :mod:`.seals`.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._internal import log_internal_error
from ..errors import ConfigError
from .intervals import Interval
from .merkle import MerkleAccumulator
from .seals import Seal, write_seal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
    )

    from ..config import AuditConfig
    from ..pipeline.batch import BatchPipeline
    from ..prepared import PreparedRecord
    from ..store.writer import StoreWriter
    from .chain import ChainSealer

__all__ = ["PeriodicSeals", "install_seals"]

# PreparedRecord's stream, seq and hash (an itemgetter: no Python-level call per record)
_STREAM, _SEQ, _HASH = operator.itemgetter(2), operator.itemgetter(3), operator.itemgetter(5)


class PeriodicSeals:
    """``on_written`` hook sealing this writer's stream every ``interval`` seconds while
    it writes, and once more at :meth:`close` (trail shutdown).

    It runs after each committed batch (on the thread that wrote it), so a seal only names a
    committed head. A seal that cannot be written is logged, never raised: sealing must
    not fail the write path.

    Each seal also names the Merkle root of the records since the previous seal
    (:mod:`.intervals`), kept in O(log n) memory as the batches commit (format 3's
    hashes are public, keyed chain or not: proofs need that). An interval whose records
    did not commit in ``seq`` order, or that follows a seal that could not be written,
    gets none: its seal stays plain.
    """

    def __init__(self, writer: StoreWriter, chain: ChainSealer, interval: float,
                 key: Ed25519PrivateKey | None) -> None:
        self.writer = writer
        self.chain = chain
        self.interval = interval
        self.key = key
        self._lock = threading.Lock()
        self._head: tuple[str, int, str] | None = None  # last committed (stream, seq, hash)
        self._sealed: tuple[str, int, str] | None = None
        self._last = time.monotonic()
        self._trees = True  # format 3: public hashes, keyed chain or not
        self._acc: MerkleAccumulator | None = MerkleAccumulator() if self._trees else None
        self._acc_first = 1  # seq of the accumulator's first leaf
        ref = weakref.ref(self)  # the fork hook must not keep a closed trail's seals alive

        def _after_fork() -> None:
            seals = ref()
            if seals is not None:
                seals._after_fork()

        os.register_at_fork(after_in_child=_after_fork)

    def _after_fork(self) -> None:
        # the child is a new writer with its own stream; the parent's heads are not its own
        self._lock = threading.Lock()
        self._head = self._sealed = None
        self._last = time.monotonic()
        self._acc = MerkleAccumulator() if self._trees else None
        self._acc_first = 1

    def _leaves(self, batch: Sequence[PreparedRecord], stream: str) -> None:
        """Add the batch's records of ``stream`` to the interval's tree (under the lock)."""
        acc = self._acc
        if acc is None:
            return
        # this runs after every commit, between two batches: the hashes are gathered
        # and the tree extended in one call (compiled where built); the common batch
        # (all of this stream, in seq order, each with its hash) with C-level passes
        expected = self._acc_first + acc.size
        hashes: list[str] = list(map(_HASH, batch))
        if (list(map(_STREAM, batch)).count(stream) == len(batch) and all(hashes)
                and list(map(_SEQ, batch)) == list(range(expected, expected + len(batch)))):
            acc.extend(hashes)
            return
        hashes = []
        for prepared in batch:
            if prepared.stream != stream or prepared.seq is None:
                continue
            if prepared.seq != expected or not prepared.hash:
                self._acc = None  # out of order (a retried batch): no tree this interval
                return
            hashes.append(prepared.hash)
            expected += 1
        acc.extend(hashes)

    def __call__(self, batch: Sequence[PreparedRecord]) -> None:
        """Note the batch's last record of this stream; seal when the interval is over."""
        stream = self.chain.stream
        top: PreparedRecord | None = None
        for prepared in reversed(batch):  # records of a batch are sealed in seq order
            if prepared.stream == stream and prepared.seq is not None:
                top = prepared
                break
        if top is None:
            return
        with self._lock:
            seq = top.seq or 0
            if self._head is None or self._head[0] != stream or seq > self._head[1]:
                self._head = (stream, seq, top.hash or "")
            if self._acc is not None:
                try:
                    self._leaves(batch, stream)
                except ValueError:  # a hash that is not hex: no tree this interval
                    self._acc = None
            due = self.interval > 0 and time.monotonic() - self._last >= self.interval
        if due:
            self.seal()

    #: Longest a seal waits for a lock: the store thread and the shutdown never hang on it.
    LOCK_TIMEOUT = 1.0

    def seal(self) -> Seal | None:
        """Seal the last committed head now, if it changed since the last seal."""
        with self._lock:
            head = self._head
            if head is None or head == self._sealed:
                return None
            self._last = time.monotonic()
            acc, first = self._acc, self._acc_first
            tree: dict[str, Interval] | None = None
            if acc is not None and acc.size and first + acc.size - 1 == head[1]:
                tree = {head[0]: (first, head[1], acc.root())}
            if self._trees:  # the next interval starts after this head
                self._acc, self._acc_first = MerkleAccumulator(), head[1] + 1
        stream, seq, hash_ = head
        try:
            seal = write_seal(self.writer.engine, stream, {stream: (seq, hash_)}, self.key,
                              timeout=self.LOCK_TIMEOUT, intervals=tree)
        except Exception:  # an extra: never fail the write path or the shutdown over it
            log_internal_error("seal", logging.WARNING, "could not write an audit seal",
                               exc_info=True)
            with self._lock:  # the next interval would not follow a written seal
                if self._acc_first == head[1] + 1:
                    self._acc = None
            return None
        with self._lock:
            self._sealed = head
        return seal

    def close(self, drained: bool = True) -> None:
        """The final seal at trail shutdown, once the pipeline drained (``drained``).

        A pipeline that could not drain met a store that is down or stuck: no seal is
        attempted then (the next process's, or ``otel-audit seal``'s, covers the head).
        The pipeline has disposed of the writer's connections by now: the one this seal
        opened is closed again, so a shut-down trail holds no connection.
        """
        if drained and self.seal() is not None:
            self.writer.dispose()


def install_seals(config: AuditConfig, writer: StoreWriter, pipeline: BatchPipeline,
                  chain: ChainSealer) -> PeriodicSeals:
    """Seal ``chain``'s stream every ``config.seal_interval`` seconds and at shutdown."""
    from .keys import load_signing_key

    interval = config.seal_interval
    if not isinstance(interval, int | float) or interval < 0:
        raise ConfigError(f"seal_interval must be >= 0 seconds; got {interval!r}")
    seals = PeriodicSeals(writer, chain, float(interval), load_signing_key(config.signing_key))
    pipeline.on_written.append(seals)
    return seals
