"""Sealed intervals: the Merkle root of each stream's records sealed since the last seal.

A seal made by ``otel-audit seal`` (:func:`~otel_audit.integrity.seals.seal_all`) names,
for every stream with records since this sealer's previous seal, the *interval*
``first..seq`` and the Merkle root (:mod:`~otel_audit.integrity.merkle`) of those
records' chain hashes in ``seq`` order. It is written into the seal's ``heads`` entry
``[seq, hash, first, root]`` (a plain head stays ``[seq, hash]``), so the seal's hash and
signature cover it: that is the second seal format. Old seals keep verifying; a stream
with no new records, or whose interval is not complete in the store (pruned, a gap),
keeps the plain head and has no proofs for that interval. A trail's own periodic seals
(:class:`~otel_audit.integrity.periodic_seals.PeriodicSeals`) name the interval of its stream
the same way, from the records it committed.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from ..store.schema import audit_seals, audit_trails
from .merkle import merkle_root

__all__ = ["Interval", "interval_roots", "previous_heads", "seal_intervals"]

#: ``(first seq, last seq, root)`` of one stream's records in one seal.
Interval = tuple[int, int, str]


def previous_heads(conn: Any, sealer: str) -> dict[str, int]:
    """``stream -> seq`` named by ``sealer``'s newest seal (empty: no seal yet)."""
    s = audit_seals.c
    row = conn.execute(select(s.heads).where(s.sealer == sealer)
                       .order_by(s.seq.desc()).limit(1)).first()
    if row is None:
        return {}
    try:
        doc = json.loads(row[0])
        return {str(k): int(v[0]) for k, v in doc.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}  # a malformed last seal: verify reports it; roots start afresh


def interval_roots(engine: Engine, sealer: str, heads: dict[str, tuple[int, str]],
                   ) -> dict[str, Interval]:
    """The interval and Merkle root of each stream of ``heads`` with records after the
    seq that ``sealer``'s previous seal named, read from the store.

    A stream whose interval is not complete and contiguous in the store gets none.
    """
    t = audit_trails.c
    out: dict[str, Interval] = {}
    try:
        with engine.connect() as conn:
            before = previous_heads(conn, sealer)
            for stream, (seq, head_hash) in heads.items():
                first = before.get(stream, 0) + 1
                if first > seq:
                    continue
                rows = conn.execute(select(t.seq, t.hash)
                                    .where(t.stream == stream, t.seq >= first, t.seq <= seq)
                                    .order_by(t.seq)).all()
                hashes = [str(h) for _, h in rows]
                if (len(rows) != seq - first + 1 or int(rows[0][0]) != first
                        or hashes[-1] != head_hash):
                    continue
                try:
                    out[stream] = (first, seq, merkle_root(hashes))
                except ValueError:  # a hash that is not hex: no tree can name it
                    continue
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the sealed records: {exc}") from exc
    return out


def seal_intervals(heads_text: str) -> dict[str, Interval]:
    """The intervals a seal's ``heads`` text names (none for a first-format seal)."""
    out: dict[str, Interval] = {}
    try:
        doc = json.loads(heads_text)
    except ValueError:
        return out
    if not isinstance(doc, dict):
        return out
    for stream, head in doc.items():
        if isinstance(head, list) and len(head) == 4:
            seq, _, first, root = head
            if (type(seq) is int and type(first) is int and isinstance(root, str)
                    and 1 <= first <= seq):
                out[str(stream)] = (first, seq, root)
    return out
