"""Seals: signed digests of chain heads, chained per sealer, written on a schedule.

A *seal* commits to the head ``(seq, hash)`` of one or more streams at one time. Seals
form their own chain per *sealer* (``seq`` 1, 2, 3, ... and the previous seal's hash), so
a deleted seal leaves a gap, and each is Ed25519-signed when a signing key is set.

* A trail seals its own stream every ``seal_interval`` seconds while it writes and at
  shutdown (:class:`~.periodic_seals.PeriodicSeals`): short streams, a CLI run's or a process's, are
  sealed too, and the unsealed tail of a stream is bounded in time, not in records.
* ``otel-audit seal`` (:func:`seal_all`) seals the head of *every* stream from a
  separate process with its own key, also when nothing happened, and can append each
  seal to a file kept outside the database (:func:`append_seal_file`).

``verify`` checks every seal chain and treats each sealed head as a checkpoint, so the
deletion of a stream's newest records, or of a whole stream, that a seal named is a
finding (see ``docs/integrity.md`` for what window remains).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import IntegrityError, StoreError
from ..store.schema import audit_seals, audit_trails
from .canonical import FORMAT, GENESIS_HASH
from .intervals import Interval, interval_roots
from .keys import PublicKeys, public_key_hex, sign, signature_valid, utc_text
from .seqindex import NAMES

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
    )

    from .walk import Finding

__all__ = [
    "SEAL_FILE_FORMAT",
    "Seal",
    "all_seals",
    "append_seal_file",
    "check_seals",
    "default_sealer_name",
    "load_seal_file",
    "seal_all",
    "stream_heads",
    "write_seal",
]

#: ``format`` member of every line of a seal file.
SEAL_FILE_FORMAT = "otel-audit-seal/1"


@dataclass(frozen=True, slots=True)
class Seal:
    """One seal: ``heads`` maps each sealed stream to its ``[seq, hash]``."""

    sealer: str
    seq: int
    prev_hash: str
    created_at: str
    heads: str
    hash: str
    signature: str | None = None
    public_key: str | None = None

    def message(self) -> bytes:
        """The hashed and signed bytes: format, sealer, seq, previous hash, time, heads."""
        return (f"{FORMAT}/seal\n{self.sealer}\n{self.seq}\n{self.prev_hash}\n"
                f"{self.created_at}\n{self.heads}").encode()

    def expected_hash(self) -> str:
        """SHA-256 of :meth:`message` (what ``hash`` must hold)."""
        return hashlib.sha256(self.message()).hexdigest()

    def signature_ok(self, public: PublicKeys) -> bool:
        """Whether the seal carries ``public``'s valid signature."""
        return signature_valid(public, self.message(), self.signature, self.created_at)

    def head_map(self) -> dict[str, tuple[int, str]]:
        """``stream -> (seq, hash)``; raises :class:`ValueError` on a malformed text."""
        doc = json.loads(self.heads)
        if not isinstance(doc, dict):
            raise ValueError("heads is not a JSON object")
        out: dict[str, tuple[int, str]] = {}
        for stream, head in doc.items():
            if not isinstance(head, list) or len(head) not in (2, 4):
                raise ValueError(f"malformed head of {stream!r}")
            seq, hash_ = head[0], head[1]  # [seq, hash, first, root]: an interval's tree
            if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(hash_, str):
                raise ValueError(f"malformed head of {stream!r}")
            out[str(stream)] = (seq, hash_)
        return out


def heads_text(heads: dict[str, tuple[int, str]],
               intervals: dict[str, Interval] | None = None) -> str:
    """The canonical ``heads`` text: sorted keys, compact; a stream with an interval's
    Merkle root (:mod:`.intervals`) as ``[seq, hash, first, root]``."""
    roots = intervals or {}
    return json.dumps({s: [int(q), h] if s not in roots else [int(q), h, roots[s][0],
                                                              roots[s][2]]
                       for s, (q, h) in heads.items()}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)


def default_sealer_name() -> str:
    """``otel-audit-seal@host``: the name ``otel-audit seal`` uses unless given one."""
    return f"otel-audit-seal@{socket.gethostname()[:80]}"


def _last_seal(conn: Any, sealer: str) -> tuple[int, str] | None:
    s = audit_seals.c
    row = conn.execute(select(s.seq, s.hash).where(s.sealer == sealer)
                       .order_by(s.seq.desc()).limit(1)).first()
    return None if row is None else (int(row[0]), str(row[1]))


def _bounded(conn: Any, timeout: float) -> None:
    """Let this transaction wait at most ``timeout`` seconds for a lock."""
    ms = max(1, int(timeout * 1000))
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA busy_timeout={ms}")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")


def write_seal(engine: Engine, sealer: str, heads: dict[str, tuple[int, str]],
               key: Ed25519PrivateKey | None = None, *, timeout: float | None = None,
               intervals: dict[str, Interval] | None = None) -> Seal:
    """Append a seal of ``heads`` to ``sealer``'s chain (signed with ``key``).

    ``timeout`` bounds the wait for a lock (a shutdown must not hang on a busy store).
    ``intervals`` adds the Merkle roots of the records sealed since the last seal.
    """
    try:
        with engine.begin() as conn:
            if timeout is not None:
                _bounded(conn, timeout)
            try:
                seal = _append(conn, sealer, heads, key, intervals)
            finally:
                if timeout is not None and conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("PRAGMA busy_timeout=5000")  # the store's default
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot write a seal: {exc}") from exc
    return seal


def _append(conn: Any, sealer: str, heads: dict[str, tuple[int, str]],
            key: Ed25519PrivateKey | None, intervals: dict[str, Interval] | None = None,
            ) -> Seal:
    """Read ``sealer``'s last seal and append the next one, on ``conn``'s transaction."""
    last = _last_seal(conn, sealer)
    seq, prev = (1, GENESIS_HASH) if last is None else (last[0] + 1, last[1])
    draft = Seal(sealer, seq, prev, utc_text(), heads_text(heads, intervals), "")
    seal = Seal(draft.sealer, seq, prev, draft.created_at, draft.heads, draft.expected_hash(),
                None if key is None else sign(key, draft.message()),
                None if key is None else public_key_hex(key))
    conn.execute(insert(audit_seals).values(
        sealer=seal.sealer, seq=seal.seq, prev_hash=seal.prev_hash,
        created_at=dt.datetime.fromisoformat(seal.created_at), heads=seal.heads,
        hash=seal.hash, signature=seal.signature, public_key=seal.public_key))
    return seal


def all_seals(engine: Engine) -> list[Seal]:
    """Every stored seal, by sealer and seq."""
    s = audit_seals.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(s.sealer, s.seq, s.prev_hash, s.created_at, s.heads,
                                       s.hash, s.signature, s.public_key)
                                .order_by(s.sealer, s.seq)).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the seals (run `otel-audit migrate`?): {exc}") from exc
    return [Seal(str(r[0]), int(r[1]), str(r[2]), utc_text(r[3]), str(r[4]), str(r[5]),
                 r[6], r[7]) for r in rows]


def stream_heads(engine: Engine) -> dict[str, tuple[int, str]]:
    """The current head ``(seq, hash)`` of every stream in the live store."""
    t = audit_trails.c
    last = (select(t.stream, func.max(t.seq).label("seq"))
            .where(t.stream.is_not(None)).group_by(t.stream).subquery())
    query = select(t.stream, t.seq, t.hash).join(
        last, (t.stream == last.c.stream) & (t.seq == last.c.seq))
    try:
        with engine.connect() as conn:
            return {str(s): (int(q), str(h)) for s, q, h in conn.execute(query).all()}
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the chain heads: {exc}") from exc


def seal_all(engine: Engine, sealer: str, key: Ed25519PrivateKey | None = None) -> Seal:
    """Seal the head of every stream (``otel-audit seal``); also when nothing changed.

    Each stream with records since this sealer's last seal also gets the Merkle root of
    them (:func:`.intervals.interval_roots`): ``otel-audit prove`` proves one record.
    """
    heads = stream_heads(engine)
    return write_seal(engine, sealer, heads, key,
                      intervals=interval_roots(engine, sealer, heads))


def append_seal_file(seal: Seal, path: str | Path) -> None:
    """Append ``seal`` as one JSON line to ``path`` (created owner-only), then fsync."""
    line = json.dumps({"format": SEAL_FILE_FORMAT, **asdict(seal)}, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def load_seal_file(path: str | Path) -> list[Seal]:
    """Read a file written by :func:`append_seal_file`."""
    out: list[Seal] = []
    try:
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            doc = json.loads(line)
            if doc.get("format") != SEAL_FILE_FORMAT:
                raise IntegrityError(f"{path}:{number} is not an otel-audit seal")
            out.append(Seal(str(doc["sealer"]), int(doc["seq"]), str(doc["prev_hash"]),
                            str(doc["created_at"]), str(doc["heads"]), str(doc["hash"]),
                            doc.get("signature"), doc.get("public_key")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"cannot read seals from {path}: {exc}") from exc
    return out


def seals_by_sealer(seals: Iterable[Seal]) -> dict[str, list[Seal]]:
    """Seals grouped by sealer, each list in ``seq`` order."""
    out: dict[str, list[Seal]] = {}
    for seal in seals:
        out.setdefault(seal.sealer, []).append(seal)
    for items in out.values():
        items.sort(key=lambda s: s.seq)
    return out


def check_seals(stored: Sequence[Seal], exported: Sequence[Seal] = (), *,
                public_key: PublicKeys | None = None, require_signed: bool = False,
                ) -> tuple[list[Finding], list[Finding], list[tuple[str, int, str, str]]]:
    """``(findings, warnings, sealed heads)`` of the seals in the store and in a file.

    Each sealer's chain must start at 1, have no gap, link each seal to the previous
    one's hash and match its own hash; with ``public_key`` each seal's signature must
    verify (unsigned: a warning, or a finding with ``require_signed``). An exported seal
    missing from the store (deleted, or the database rolled back) or different from it
    is a finding. The heads of every seal come back for the chain walk.
    """
    from .walk import Finding

    findings: list[Finding] = []
    warnings: list[Finding] = []
    heads: list[tuple[str, int, str, str]] = []
    known = {(s.sealer, s.seq): s for s in stored}
    merged = list(stored)
    for seal in exported:
        mine = known.get((seal.sealer, seal.seq))
        if mine is None:
            findings.append(Finding("seal", seal.sealer, seal.seq, None,
                                    "an exported seal is missing from the database (deleted, "
                                    "or the database rolled back)"))
            merged.append(seal)
        elif mine.hash != seal.hash:
            findings.append(Finding("conflict", seal.sealer, seal.seq, None,
                                    "the exported seal differs from the database's"))
    for sealer, chain in seals_by_sealer(merged).items():
        expected_seq, prev = 1, GENESIS_HASH
        unsigned: list[int] = []
        for seal in chain:
            if seal.seq > expected_seq:
                gap = (f"{expected_seq}" if seal.seq == expected_seq + 1
                       else f"{expected_seq}..{seal.seq - 1}")
                findings.append(Finding("seal", sealer, expected_seq, None,
                                        f"seals {gap} of this sealer are missing (deleted)"))
            elif seal.seq < expected_seq:
                findings.append(Finding("seal", sealer, seal.seq, None,
                                        "a second seal claims this seq"))
                continue
            if seal.hash != seal.expected_hash():
                findings.append(Finding("seal", sealer, seal.seq, None,
                                        "the seal's content does not match its hash"))
            elif seal.seq == expected_seq and seal.prev_hash != prev:
                findings.append(Finding("seal", sealer, seal.seq, None,
                                        "the seal does not link to the previous seal"))
            if public_key is not None:
                if not seal.signature:
                    unsigned.append(seal.seq)
                elif not seal.signature_ok(public_key):
                    findings.append(Finding("bad_signature", sealer, seal.seq, None,
                                            "seal signature does not verify"))
            try:
                for stream, (seq, hash_) in seal.head_map().items():
                    heads.append((stream, seq, hash_, f"seal {seal.seq} of {sealer}"))
            except (ValueError, TypeError):
                findings.append(Finding("seal", sealer, seal.seq, None,
                                        "the seal's heads are malformed"))
            expected_seq, prev = seal.seq + 1, seal.hash
        if unsigned:  # one line per sealer: a writer without the key seals every minute
            (findings if require_signed else warnings).append(Finding(
                "unsigned", sealer, unsigned[0], None,
                "the seal is not signed" if len(unsigned) == 1
                else f"{len(unsigned)} seals of this sealer are not signed"))
    return findings, warnings, heads


#: Default of :func:`check_stream_births`' ``grace``: how long a record may wait between
#: its timestamp and its commit (queue, batch, retries, a spool replayed after a short
#: outage) and how far the sealer's and the writers' clocks may differ.
STREAM_GRACE = 3600.0


def all_streams_seal(seal: Seal, heads: dict[str, tuple[int, str]]) -> bool:
    """Whether ``seal`` claims to name every stream (``otel-audit seal``): a trail's own
    seal names its stream alone, under the stream's name."""
    return set(heads) != {seal.sealer}


def stream_firsts(engine: Engine) -> dict[str, tuple[int, str | None, dt.datetime | None]]:
    """``stream -> (first seq, its record's id, its timestamp)`` of every stream in the
    live store (the timestamp ``None`` where it cannot be read)."""
    sql = (f"{NAMES}SELECT t.stream, t.seq, t.id, t.timestamp FROM names JOIN audit_trails "
           "t ON t.stream = names.name AND t.seq = (SELECT MIN(seq) FROM audit_trails "
           "WHERE stream = names.name)")
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(sql).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the first record of each stream: {exc}") from exc
    out: dict[str, tuple[int, str | None, dt.datetime | None]] = {}
    for stream, seq, row_id, stamp in rows:
        if not isinstance(stream, str) or type(seq) is not int:
            continue  # a malformed row: reported by the walk
        out[stream] = (seq, row_id if isinstance(row_id, str) else None, _utc_time(stamp))
    return out


def _utc_time(value: Any) -> dt.datetime | None:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def check_stream_births(seals: Sequence[Seal],
                        firsts: dict[str, tuple[int, str | None, dt.datetime | None]], *,
                        grace: float | None = STREAM_GRACE,
                        stream: str | None = None) -> list[Finding]:
    """Streams that a seal should have named but did not: ``inserted`` findings.

    ``seals`` are the seals to judge by (stored and exported: each one whose content
    matches its hash), ``firsts`` what :func:`stream_firsts` returns. Two rules:

    * a stream named by a seal but absent from a later seal of the same sealer, while the
      store still holds its records up to the head the earlier seal named: it was hidden
      while the later seal was made (no time involved: records that were in the store
      at the first seal cannot honestly vanish and come back);
    * a stream absent from an all-streams seal (:func:`all_streams_seal`) whose first
      record is dated more than ``grace`` seconds before the seal: it was added after
      the seal with records dated before it (a backdated forgery), or hidden while the
      seal was made. ``grace`` bounds how late a record may honestly commit after its
      timestamp, and the sealer's clock's difference; ``None`` turns this rule off
      (records whose timestamps the caller sets in the past: imports, replays).
    """
    from .walk import Finding

    found: dict[str, Finding] = {}

    def add(name: str, detail: str) -> None:
        if name not in found and (stream is None or name == stream):
            seq, row_id, _ = firsts[name]
            found[name] = Finding("inserted", name, seq, row_id, detail)

    for sealer, chain in seals_by_sealer(s for s in seals
                                         if s.hash == s.expected_hash()).items():
        seen: dict[str, tuple[int, int]] = {}  # stream -> (sealed seq, seal naming it)
        for seal in chain:
            try:
                heads = seal.head_map()
            except (ValueError, TypeError):
                continue  # reported by check_seals
            for name, (seq, number) in sorted(seen.items()):
                if name not in heads and name in firsts and firsts[name][0] <= seq:
                    add(name, f"seal {number} of {sealer} names the stream, its seal "
                        f"{seal.seq} does not, yet records up to seq {seq} are in the "
                        "store: the stream was hidden while that seal was made")
            for name, (seq, _) in heads.items():
                seen[name] = (seq, seal.seq)
            if grace is None or not all_streams_seal(seal, heads):
                continue
            made = _utc_time(seal.created_at)
            if made is None:
                continue
            limit = made - dt.timedelta(seconds=grace)
            for name, (_, _, stamp) in sorted(firsts.items()):
                if name not in heads and stamp is not None and stamp < limit:
                    add(name, f"seal {seal.seq} of {sealer} ({seal.created_at}) does not "
                        f"name the stream, yet its first record is dated {utc_text(stamp)}, "
                        f"more than {grace:g} s before: added after the seal with older "
                        "dates, or hidden while it was made")
    return sorted(found.values(), key=lambda f: f.stream or "")
