"""Plugging the chain into a trail's pipeline: the sealer and the periodic checkpoints."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import operator
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from .._internal import log_internal_error
from ..config import AuditConfig
from ..errors import ConfigError, StoreError
from ..prepared import PreparedRecord, store_row
from ..store.schema import audit_checkpoints, audit_duplicates, audit_trails
from ..store.writer import StoreWriter
from .canonical import pii_info, seal_digest
from .chain import ChainSealer
from .checkpoints import write_checkpoint
from .keys import hmac_key_bytes, load_signing_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..pipeline.batch import BatchPipeline

__all__ = ["DuplicateSeals", "PeriodicCheckpoints", "install_chain", "stored_head"]


def stored_head(writer: StoreWriter, stream: str) -> tuple[int, str] | None:
    """The last ``(seq, hash)`` of ``stream`` in the store, its checkpoints (after a prune)
    or its noted duplicates."""
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
    d = audit_duplicates.c
    try:  # the head may be a noted duplicate (a table of revision 0005)
        with writer.engine.connect() as conn:
            top = select(func.max(d.seq)).where(d.stream == stream).scalar_subquery()
            row = conn.execute(select(d.seq, d.hash).where(
                d.stream == stream, d.seq == top).limit(1)).first()
    except SQLAlchemyError:
        row = None
    if row is not None and (best is None or row[0] > best[0]):
        best = (int(row[0]), str(row[1]))
    return best


_STREAM = operator.itemgetter(2)  # PreparedRecord.stream
_SEQ = operator.itemgetter(3)  # PreparedRecord.seq
_COUNT_SQL = "SELECT COUNT(*) FROM audit_trails WHERE stream = ? AND seq BETWEEN ? AND ?"
_SEQS_SQL = "SELECT seq FROM audit_trails WHERE stream = ? AND seq BETWEEN ? AND ?"


def _param_style(dialect: str, sql: str) -> str:
    return sql if dialect == "sqlite" else sql.replace("?", "%s")


def _fetch(raw: Any, sql: str, params: list[Any]) -> list[Any]:
    cursor = raw.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


class DuplicateSeals:
    """``on_written`` hook: notes the chain positions a committed batch did not fill.

    The store keeps the first record of an ``id`` (``INSERT OR IGNORE``, ``ON CONFLICT
    DO NOTHING``): a record submitted again — a client's retry, an OTLP body posted
    again after a lost response, the same record from two trails or after a restart —
    is sealed, then not inserted, and its position would read as a gap. After each
    batch this counts the batch's positions in the store (one indexed range count); for
    each one missing whose ``id`` is stored, it writes the seal to ``audit_duplicates``
    (the personal digest in erased form, no personal value), where ``verify`` reads it
    as the stored record at that position. ``count`` is how many it noted.
    """

    def __init__(self, writer: StoreWriter, sealer: ChainSealer) -> None:
        self.writer = writer
        self.sealer = sealer
        self.count = 0
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = 0

    def __call__(self, batch: Sequence[PreparedRecord]) -> None:
        """Find and note the positions of ``batch`` that the store did not take."""
        if self.writer.exporter.stored_all(batch):
            return  # the driver said every row went in: no position is missing
        stream = self.sealer.stream
        streams = list(map(_STREAM, batch))
        if streams.count(stream) != len(batch):
            batch = [p for p in batch if p.stream == stream and p.seq is not None]
        if not batch:
            return
        seqs: set[int] = set(map(_SEQ, batch))
        lo, hi = min(seqs), max(seqs)
        try:
            if hi - lo + 1 == len(seqs):  # the usual batch: one run of positions
                stored = self._query(_COUNT_SQL, [stream, lo, hi])[0][0]
                if stored == len(seqs):
                    return
            present = {row[0] for row in self._query(_SEQS_SQL, [stream, lo, hi])}
            missing = [p for p in batch if p.seq not in present]
            if missing:
                self._note(stream, missing)
        except Exception:  # never fail the write path over it; verify will show the gap
            self.close()
            log_internal_error("duplicates", logging.WARNING,
                               "could not note duplicate audit records", exc_info=True)

    def _query(self, sql: str, params: list[Any]) -> list[Any]:
        """Run one read on this hook's own driver connection (kept open: a pool checkout
        and PostgreSQL's reset on return cost more than the count itself)."""
        engine = self.writer.engine
        if isinstance(engine.pool, StaticPool):  # one shared in-memory connection
            raw = engine.raw_connection()
            try:
                return _fetch(raw, _param_style(engine.dialect.name, sql), params)
            finally:
                raw.close()
        if self._conn is None or self._pid != os.getpid():
            raw = engine.raw_connection()
            dbapi = raw.dbapi_connection
            if engine.dialect.name == "postgresql":
                raw.rollback()
                dbapi.autocommit = True  # type: ignore[union-attr]
            raw.detach()  # its own connection, out of the pool (closed by close())
            self._conn, self._pid = dbapi, os.getpid()
        return _fetch(self._conn, _param_style(engine.dialect.name, sql), params)

    def close(self) -> None:
        """Close the hook's connection (a new one is opened when needed)."""
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()

    def _note(self, stream: str, missing: list[PreparedRecord]) -> None:
        t, d = audit_trails.c, audit_duplicates.c
        rows = []
        with self.writer.engine.begin() as conn:
            ids = [p.record.id for p in missing]
            stored_ids = set(conn.execute(select(t.id).where(t.id.in_(ids))).scalars())
            noted = set(conn.execute(select(d.seq).where(
                d.stream == stream, d.seq.in_([p.seq for p in missing]))).scalars())
            now = dt.datetime.now(dt.UTC)
            for p in missing:
                if p.record.id not in stored_ids or p.seq in noted:
                    continue  # not a duplicate (a loss verify reports), or noted already
                digest = seal_digest(store_row(p))
                info = pii_info(p.pii) if p.pii is not None else None
                if digest is None:
                    continue
                keys = info[0] if info is not None else None
                pii = json.dumps({"k": keys, "d": digest} if keys else {"d": digest})
                rows.append({"stream": stream, "seq": p.seq, "id": p.record.id,
                             "prev_hash": p.prev_hash, "hash": p.hash,
                             "schema_version": p.record.schema_version, "pii": pii,
                             "mac": p.mac, "created_at": now})
            if rows:
                conn.execute(audit_duplicates.insert(), rows)
        with self._lock:
            self.count += len(rows)


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
    duplicates = DuplicateSeals(writer, sealer)
    pipeline.on_written.append(duplicates)
    sealer.duplicates = duplicates
    if config.checkpoint_every:
        pipeline.on_written.append(
            PeriodicCheckpoints(writer, sealer, config.checkpoint_every, signing_key))
    return sealer
