"""Proofs of one record and of consistency between two seals, checked without the store.

An *inclusion proof* (``otel-audit prove RECORD_ID``) holds the record's hashed fields
(personal values only through their salted digest, personal JSON values masked), enough
to recompute its chain hash; the audit path from that hash to the Merkle root of the
interval a seal names (:mod:`.intervals`); that signed seal; and the seals after it, each
linked to the one before. :func:`check_proof` needs only the proof and public keys:
no database, no other record.

A *consistency proof* (``otel-audit prove --consistency A B``) is the chain of one
sealer's seals from A to B: each links to the previous, is signed, never moves a
stream's head back or drops a stream, and each interval starts right after the head
the previous seal named.

The record's hash must be plain SHA-256: every record of format ``otel-audit/3`` (its
chain's HMAC, if any, is kept apart in ``mac``), and records of older formats sealed
without an HMAC key (a keyed hash cannot be recomputed with public material;
``docs/integrity.md``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from ..errors import IntegrityError, StoreError
from .canonical import (
    EXACT_FORMAT,
    EXACT_VERSION,
    FORMAT,
    PUBLIC_FORMAT,
    PUBLIC_VERSION,
    hash_payload,
    hashed_fields,
    payload_parts,
    stored_hash,
)
from .canonical_json import plain_bytes
from .intervals import seal_intervals
from .keys import PublicKeys
from .merkle import inclusion_proof_and_root, verify_inclusion
from .seals import Seal, all_seals, seals_by_sealer
from .sources import chain_row_select

__all__ = [
    "CONSISTENCY_FORMAT",
    "PROOF_FORMAT",
    "check_proof",
    "consistency_document",
    "proof_document",
]

#: ``format`` of an inclusion proof.
PROOF_FORMAT = "otel-audit-proof/1"
#: ``format`` of a consistency proof.
CONSISTENCY_FORMAT = "otel-audit-consistency/1"


def _fetch(engine: Engine, sql: str, params: dict[str, Any]) -> list[Any]:
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the store: {exc}") from exc


#: The hashed fields of each record format, by format tag.
_FIELDS_OF = {FORMAT: hashed_fields(1), EXACT_FORMAT: hashed_fields(EXACT_VERSION),
              PUBLIC_FORMAT: hashed_fields(PUBLIC_VERSION)}


def _record(parts: list[Any], record_hash: str) -> dict[str, Any]:
    """The proof's record: payload parts by name (see :func:`_parts_of`)."""
    names = _FIELDS_OF[parts[0]]
    body = parts[4:4 + len(names)]
    return {"format": parts[0], "stream": parts[1], "seq": parts[2], "prev_hash": parts[3],
            "fields": dict(zip(names, body, strict=True)),
            "personal_json_keys": parts[-2], "personal_digest": parts[-1],
            "hash": record_hash}


def _parts_of(record: dict[str, Any]) -> list[Any]:
    """The chain payload a proof's record stands for (raises on a malformed record)."""
    fields = record["fields"]
    names = _FIELDS_OF[record["format"]]
    if not isinstance(fields, dict) or set(fields) != set(names):
        raise ValueError("the record's fields are not the hashed fields of its format")
    return [record["format"], record["stream"], record["seq"], record["prev_hash"],
            *(fields[name] for name in names), record["personal_json_keys"],
            record["personal_digest"]]


def proof_document(engine: Engine, record_id: str, *, sealer: str | None = None,
                   until: int | None = None) -> dict[str, Any]:
    """The inclusion proof of record ``record_id`` (raises :class:`IntegrityError` when
    it cannot be proven: unknown, not sealed in an interval yet, or not matching)."""
    dialect = engine.dialect.name
    rows = _fetch(engine, f"SELECT {chain_row_select(dialect)} FROM audit_trails "
                  "WHERE id = :id", {"id": record_id})
    if not rows:
        raise IntegrityError(f"no record {record_id!r} in the store")
    row = tuple(rows[0])
    stream, seq, record_hash = row[0], row[1], stored_hash(row)
    if stream is None or type(seq) is not int:
        raise IntegrityError(f"record {record_id!r} is not chained")
    parts = payload_parts(row, True, dialect == "postgresql")
    if parts is None or hash_payload(plain_bytes(parts), None) != record_hash:
        raise IntegrityError(
            f"record {record_id!r} does not match its plain SHA-256 hash (modified, or a "
            "chain keyed with an HMAC key, which a public proof cannot recompute): run "
            "`otel-audit verify`")
    found: tuple[Seal, int, int, str] | None = None
    for name, chain in sorted(seals_by_sealer(all_seals(engine)).items()):
        if sealer is not None and name != sealer:
            continue
        for seal in chain:
            interval = seal_intervals(seal.heads).get(stream)
            if interval is not None and interval[0] <= seq <= interval[1]:
                if found is None or seal.created_at < found[0].created_at:
                    found = (seal, *interval)
                break
    if found is None:
        raise IntegrityError(f"record {record_id!r} is in no sealed interval yet (run "
                             "`otel-audit seal`)")
    seal, first, last, root = found
    leaves = _fetch(engine, "SELECT seq, hash FROM audit_trails WHERE stream = :s AND "
                    "seq >= :a AND seq <= :b ORDER BY seq", {"s": stream, "a": first, "b": last})
    hashes = [str(h) for _, h in leaves]
    path, stored_root = (inclusion_proof_and_root(hashes, seq - first)
                         if len(hashes) == last - first + 1 else ([], ""))
    if stored_root != root:
        raise IntegrityError(f"the stored records of {stream} {first}..{last} are not the "
                             f"ones seal {seal.seq} of {seal.sealer} sealed: run "
                             "`otel-audit verify`")
    later = [s for s in seals_by_sealer(all_seals(engine)).get(seal.sealer, [])
             if s.seq > seal.seq and (until is None or s.seq <= until)]
    return {"format": PROOF_FORMAT, "record": _record(parts, record_hash),
            "leaf_index": seq - first, "tree_size": last - first + 1,
            "path": path, "seal": asdict(seal),
            "chain": [asdict(s) for s in later]}


def consistency_document(engine: Engine, sealer: str, first: int,
                         second: int) -> dict[str, Any]:
    """The seals ``first..second`` of ``sealer``: the proof that ``second`` extends
    ``first``."""
    if not 0 < first <= second:
        raise IntegrityError(f"no consistency proof from seal {first} to seal {second}")
    chain = [s for s in seals_by_sealer(all_seals(engine)).get(sealer, [])
             if first <= s.seq <= second]
    if [s.seq for s in chain] != list(range(first, second + 1)):
        raise IntegrityError(f"seals {first}..{second} of {sealer} are not all in the store")
    return {"format": CONSISTENCY_FORMAT, "seals": [asdict(s) for s in chain]}


def _seal(doc: Any) -> Seal:
    if not isinstance(doc, dict):
        raise ValueError("a seal is not a JSON object")
    return Seal(str(doc["sealer"]), int(doc["seq"]), str(doc["prev_hash"]),
                str(doc["created_at"]), str(doc["heads"]), str(doc["hash"]),
                doc.get("signature"), doc.get("public_key"))


def _seal_problem(seal: Seal, public: PublicKeys) -> str | None:
    if seal.hash != seal.expected_hash():
        return f"seal {seal.seq} does not match its hash"
    if not seal.signature:
        return f"seal {seal.seq} is not signed"
    if not seal.signature_ok(public):
        return f"the signature of seal {seal.seq} does not verify with the given keys"
    return None


def _chain_problem(seals: Sequence[Seal], public: PublicKeys) -> str | None:
    """Each seal intact and signed, each linked to the one before, heads never back."""
    for before, seal in zip([None, *seals], seals, strict=False):
        problem = _seal_problem(seal, public)
        if problem is not None:
            return problem
        if before is None:
            continue
        if seal.sealer != before.sealer or seal.seq != before.seq + 1 \
                or seal.prev_hash != before.hash:
            return f"seal {seal.seq} does not follow seal {before.seq} of {before.sealer}"
        try:
            old, new = before.head_map(), seal.head_map()
        except (ValueError, TypeError):
            return f"the heads of seal {seal.seq} are malformed"
        intervals = seal_intervals(seal.heads)
        for stream, (seq, _) in old.items():
            if stream not in new:
                return f"seal {seal.seq} drops stream {stream}"
            if new[stream][0] < seq:
                return f"seal {seal.seq} moves the head of {stream} back"
        for stream, (first, _, _) in intervals.items():
            if first != old.get(stream, (0, ""))[0] + 1:
                return (f"the interval of {stream} in seal {seal.seq} does not start after "
                        "the previous seal's head")
    return None


def check_proof(doc: Any, public: PublicKeys) -> str | None:
    """``None`` when the proof holds, else why not (raises :class:`IntegrityError` for a
    document that is no proof at all)."""
    if not isinstance(doc, dict) or doc.get("format") not in (PROOF_FORMAT,
                                                               CONSISTENCY_FORMAT):
        raise IntegrityError("not an otel-audit proof (format)")
    try:
        if doc["format"] == CONSISTENCY_FORMAT:
            seals = [_seal(s) for s in doc["seals"]]
            if not seals:
                return "the proof names no seal"
            return _chain_problem(seals, public)
        return _inclusion_problem(doc, public)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        return f"the proof is malformed: {exc}"


def _inclusion_problem(doc: dict[str, Any], public: PublicKeys) -> str | None:
    record = doc["record"]
    if record["format"] not in _FIELDS_OF:
        return f"unknown record format {record['format']!r}"
    record_hash = record["hash"]
    if hash_payload(plain_bytes(_parts_of(record)), None) != record_hash:
        return "the record does not match its hash"
    seal = _seal(doc["seal"])
    problem = _chain_problem([seal, *(_seal(s) for s in doc["chain"])], public)
    if problem is not None:  # the seal first: what it names counts only once authentic
        return problem
    interval = seal_intervals(seal.heads).get(record["stream"])
    if interval is None:
        return f"seal {seal.seq} names no interval of stream {record['stream']}"
    first, last, root = interval
    index, size, seq = doc["leaf_index"], doc["tree_size"], record["seq"]
    if type(seq) is not int or index != seq - first or size != last - first + 1:
        return "the record's place is not the one the seal's interval gives"
    if not verify_inclusion(record_hash, index, size, doc["path"], root):
        return "the audit path does not lead to the sealed Merkle root"
    return None


def load_proof(path: str) -> Any:
    """The JSON document in file ``path`` (raises :class:`IntegrityError`)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"cannot read the proof {path}: {exc}") from exc
