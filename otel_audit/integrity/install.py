"""Plugging the chain into a trail's pipeline: the sealer and the periodic checkpoints."""

from __future__ import annotations

import logging
import operator
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from .._internal import log_internal_error
from ..config import AuditConfig
from ..errors import ConfigError, StoreError
from ..store.schema import audit_checkpoints, audit_trails
from ..store.writer import PreparedRecord, StoreWriter
from .chain import ChainSealer
from .checkpoints import write_checkpoint
from .keys import hmac_key_bytes, load_signing_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..pipeline.batch import BatchPipeline

__all__ = ["PeriodicCheckpoints", "install_chain", "stored_head"]


def stored_head(writer: StoreWriter, stream: str) -> tuple[int, str] | None:
    """The last ``(seq, hash)`` of ``stream`` in the store or its checkpoints (after a prune)."""
    writer.ensure_schema()
    t, c = audit_trails.c, audit_checkpoints.c
    best: tuple[int, str] | None = None
    try:
        with writer.engine.connect() as conn:
            for table_seq, table_hash, table_stream in ((t.seq, t.hash, t.stream),
                                                        (c.seq, c.hash, c.stream)):
                top = select(func.max(table_seq)).where(table_stream == stream).scalar_subquery()
                row = conn.execute(select(table_seq, table_hash).where(
                    table_stream == stream, table_seq == top).limit(1)).first()
                if row is not None and (best is None or row[0] > best[0]):
                    best = (int(row[0]), str(row[1]))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the head of stream {stream!r}: {exc}") from exc
    return best


_STREAM = operator.itemgetter(2)  # PreparedRecord.stream


class PeriodicCheckpoints:
    """``on_written`` hook: checkpoint this writer's chain every ``every`` committed records."""

    def __init__(self, writer: StoreWriter, sealer: ChainSealer, every: int,
                 key: Ed25519PrivateKey | None) -> None:
        self.writer = writer
        self.sealer = sealer
        self.every = every
        self.key = key
        self._since_last = 0
        self._lock = threading.Lock()

    def __call__(self, batch: Sequence[PreparedRecord]) -> None:
        """Count ``batch``; at the threshold, checkpoint its last record of this stream."""
        stream = self.sealer.stream
        # counted with C-level passes: this runs on the store thread for every batch
        count = list(map(_STREAM, batch)).count(stream)  # a stream is set with its seq
        if not count:
            return
        with self._lock:
            self._since_last += count
            if self._since_last < self.every:
                return
            self._since_last = 0
        last = max((p for p in batch if p.stream == stream and p.seq is not None),
                   key=lambda p: p.seq or 0)
        try:
            write_checkpoint(self.writer.engine, stream, last.seq or 0, last.hash or "",
                             self.key)
        except Exception:  # a checkpoint is an extra: never fail the write path over it
            log_internal_error("checkpoint", logging.WARNING,
                               "could not write an audit checkpoint", exc_info=True)


def install_chain(config: AuditConfig, writer: StoreWriter, pipeline: BatchPipeline) -> ChainSealer:
    """Chain every record ``pipeline`` writes; checkpoint every ``config.checkpoint_every``."""
    if not isinstance(config.checkpoint_every, int) or config.checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0; got {config.checkpoint_every!r}")
    signing_key = load_signing_key(config.signing_key)
    sealer = ChainSealer(
        service_name=config.service_name,
        stream=config.chain_stream,
        hmac_key=hmac_key_bytes(config.hmac_key),
        personal_keys=config.personal_keys,
        head_lookup=lambda stream: stored_head(writer, stream),
    )
    pipeline.sealers.append(sealer)
    if config.checkpoint_every:
        pipeline.on_written.append(
            PeriodicCheckpoints(writer, sealer, config.checkpoint_every, signing_key))
    return sealer
