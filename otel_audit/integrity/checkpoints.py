"""Checkpoints: the head ``(stream, seq, hash, time)`` of each chain, optionally signed.

Rows live in ``audit_checkpoints``; :func:`export_checkpoints` writes the latest one of
each stream to a JSON file meant to be kept somewhere else (another system, a WORM
bucket, a ticket). A database restored from an old backup, or truncated, no longer
reaches the exported heads, and ``verify --checkpoints FILE`` says so.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import IntegrityError, StoreError
from ..store.schema import audit_checkpoints, audit_trails
from .canonical import FORMAT
from .keys import PublicKeys, public_key_hex, sign, signature_valid, utc_text

__all__ = [
    "EXPORT_FORMAT",
    "Checkpoint",
    "create_checkpoints",
    "export_checkpoints",
    "latest_checkpoints",
    "load_checkpoint_file",
    "write_checkpoint",
]

#: ``format`` field of an exported checkpoint file.
EXPORT_FORMAT = "otel-audit-checkpoints/1"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The head of one stream at one time; ``signature`` covers :meth:`message`."""

    stream: str
    seq: int
    hash: str
    created_at: str
    signature: str | None = None
    public_key: str | None = None

    def message(self) -> bytes:
        """The signed bytes: format, stream, seq, hash and time, one per line."""
        return f"{FORMAT}/checkpoint\n{self.stream}\n{self.seq}\n{self.hash}\n" \
               f"{self.created_at}".encode()

    def signature_ok(self, public: PublicKeys) -> bool:
        """Whether the checkpoint carries ``public``'s valid signature."""
        return signature_valid(public, self.message(), self.signature, self.created_at)


def _new(stream: str, seq: int, hash_: str, key: Ed25519PrivateKey | None) -> Checkpoint:
    created = utc_text()
    unsigned = Checkpoint(stream, seq, hash_, created)
    if key is None:
        return unsigned
    return Checkpoint(stream, seq, hash_, created, sign(key, unsigned.message()),
                      public_key_hex(key))


def write_checkpoint(engine: Engine, stream: str, seq: int, hash_: str,
                     key: Ed25519PrivateKey | None = None) -> Checkpoint:
    """Store (and sign, with ``key``) a checkpoint of ``stream`` at ``seq``."""
    cp = _new(stream, seq, hash_, key)
    try:
        with engine.begin() as conn:
            conn.execute(insert(audit_checkpoints).values(
                stream=cp.stream, seq=cp.seq, hash=cp.hash,
                created_at=dt.datetime.fromisoformat(cp.created_at),
                signature=cp.signature, public_key=cp.public_key))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot write a checkpoint: {exc}") from exc
    return cp


def create_checkpoints(engine: Engine, key: Ed25519PrivateKey | None = None) -> list[Checkpoint]:
    """Checkpoint the current head of every stream in the live store."""
    t = audit_trails.c
    last = (select(t.stream, func.max(t.seq).label("seq"))
            .where(t.stream.is_not(None)).group_by(t.stream).subquery())
    query = select(t.stream, t.seq, t.hash).join(
        last, (t.stream == last.c.stream) & (t.seq == last.c.seq))
    try:
        with engine.connect() as conn:
            heads = conn.execute(query).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the chain heads: {exc}") from exc
    return [write_checkpoint(engine, s, int(q), h, key) for s, q, h in heads]


def latest_checkpoints(engine: Engine) -> list[Checkpoint]:
    """The newest checkpoint (highest ``seq``) of every stream."""
    c = audit_checkpoints.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(c.stream, c.seq, c.hash, c.created_at, c.signature,
                                       c.public_key).order_by(c.stream, c.seq, c.id)).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the checkpoints: {exc}") from exc
    latest: dict[str, Checkpoint] = {}
    for stream, seq, hash_, created, signature, public in rows:
        latest[stream] = Checkpoint(stream, int(seq), hash_, utc_text(created), signature,
                                    public)
    return list(latest.values())


def all_checkpoints(engine: Engine) -> list[Checkpoint]:
    """Every stored checkpoint (verify checks each one)."""
    c = audit_checkpoints.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(c.stream, c.seq, c.hash, c.created_at, c.signature,
                                       c.public_key).order_by(c.stream, c.seq)).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the checkpoints: {exc}") from exc
    return [Checkpoint(s, int(q), h, utc_text(t), sig, pk) for s, q, h, t, sig, pk in rows]


def export_checkpoints(checkpoints: Iterable[Checkpoint], path: str | Path) -> int:
    """Write ``checkpoints`` to ``path`` (JSON, atomically). Returns how many."""
    items = [asdict(cp) for cp in checkpoints]
    doc = {"format": EXPORT_FORMAT,
           "exported_at": utc_text(),
           "checkpoints": items}
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, target)
    return len(items)


def load_checkpoint_file(path: str | Path) -> list[Checkpoint]:
    """Read a file written by :func:`export_checkpoints`."""
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("format") != EXPORT_FORMAT:
            raise IntegrityError(f"{path} is not an otel-audit checkpoint file")
        return [Checkpoint(str(i["stream"]), int(i["seq"]), str(i["hash"]),
                           str(i["created_at"]), i.get("signature"), i.get("public_key"))
                for i in doc["checkpoints"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"cannot read checkpoints from {path}: {exc}") from exc
