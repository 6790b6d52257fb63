"""Authenticated erasures: what one ``forget`` erased, signed, and the checks of ``verify``.

An erasure keeps every hash valid (the chain covers personal values only through a
salted digest), so the chain alone cannot tell a real erasure from a forged one: anyone
who can read a row's salt can compute its digest, write it as erased and put anything in
the personal columns. ``forget`` therefore stores an *erasure document* in
``audit_erasures``: the rows it erased (``stream``, ``seq``, ``id``, the digest it kept,
the personal columns and JSON keys it erased), who erased, when, and the ID of the
``ERASE`` record it wrote to the trail, Ed25519-signed with the signing key.

:func:`check_erasures` then requires that

* every erased row (a digest kept in ``pii``) is listed, with the same digest, by an
  erasure (one showing ``[erased]`` without a kept digest fails its hash already);
* an erased row holds the erasure markers and nothing else: no salt, ``[erased]`` (or
  ``NULL``) in every personal column, ``[erased]`` under every personal JSON key;
* every row an erasure lists is erased, and the ``ERASE`` record it names exists;
* every erasure is signed by the given public key (``unauthenticated`` without one).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from ..record import JSON_FIELDS
from ..store.schema import PERSONAL_FIELDS, audit_erasures
from .canonical import FORMAT, pii_info
from .keys import PublicKeys, public_key_hex, sign, signature_valid
from .walk import Finding

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
    )
    from sqlalchemy import Connection

__all__ = [
    "ERASED",
    "ERASURE_FORMAT",
    "Erasure",
    "all_erasures",
    "check_erasures",
    "erasure_entry",
    "new_erasure",
    "store_erasure",
]

#: What an erased personal value reads as.
ERASED = "[erased]"
#: ``format`` member of an erasure document (the signed bytes are the document's text).
ERASURE_FORMAT = f"{FORMAT}/erasure"

#: Columns read for each erased-looking row, in this order.
_COLUMNS = ("stream", "seq", "id", *PERSONAL_FIELDS, "pii_salt", "pii", *JSON_FIELDS)
_P0 = 3  # first personal field
_SALT, _PII = 3 + len(PERSONAL_FIELDS), 4 + len(PERSONAL_FIELDS)
_JSON0 = 5 + len(PERSONAL_FIELDS)


@dataclass(frozen=True, slots=True)
class Erasure:
    """One stored erasure: ``document`` is the signed JSON text."""

    id: str
    created_at: str
    document: str
    signature: str | None = None
    public_key: str | None = None

    def message(self) -> bytes:
        """The signed bytes: the document's text."""
        return self.document.encode()

    def signature_ok(self, public: PublicKeys) -> bool:
        """Whether the erasure carries ``public``'s valid signature."""
        return signature_valid(public, self.message(), self.signature, self.created_at)

    def rows(self) -> list[dict[str, Any]]:
        """The erased rows the document lists (raises :class:`ValueError` if malformed)."""
        doc = json.loads(self.document)
        if not isinstance(doc, dict) or doc.get("format") != ERASURE_FORMAT \
                or doc.get("id") != self.id or not isinstance(doc.get("rows"), list):
            raise ValueError("not an erasure document of this ID")
        return list(doc["rows"])

    def record_id(self) -> str | None:
        """ID of the ``ERASE`` record the erasure wrote to the trail, if any."""
        value = json.loads(self.document).get("record")
        return value if isinstance(value, str) else None


def erasure_entry(changes: dict[str, Any], stream: str, seq: int,
                  keys: Sequence[str]) -> dict[str, Any]:
    """The document's line for one erased row (``changes`` as ``forget`` builds them)."""
    digest = pii_info(changes["pii"])
    return {"stream": stream, "seq": int(seq), "id": changes["id"],
            "d": digest[1] if digest else None,
            "fields": [n for n in PERSONAL_FIELDS if changes[n] is not None],
            "k": list(keys)}


def new_erasure(erasure_id: str, entries: list[dict[str, Any]], *, erased_by: str | None,
                record_id: str | None, key: Ed25519PrivateKey | None) -> Erasure:
    """Build (and sign, with ``key``) the erasure document of ``entries``."""
    created = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    document = json.dumps({"format": ERASURE_FORMAT, "id": erasure_id, "at": created,
                           "by": erased_by, "record": record_id, "rows": entries},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if key is None:
        return Erasure(erasure_id, created, document)
    return Erasure(erasure_id, created, document, sign(key, document.encode()),
                   public_key_hex(key))


def store_erasure(conn: Connection, erasure: Erasure) -> None:
    """Insert ``erasure`` on ``conn`` (inside the transaction that erases the live rows)."""
    conn.execute(insert(audit_erasures).values(
        id=erasure.id, created_at=dt.datetime.fromisoformat(erasure.created_at),
        document=erasure.document, signature=erasure.signature,
        public_key=erasure.public_key))


def all_erasures(engine: Engine) -> list[Erasure]:
    """Every stored erasure, oldest first."""
    e = audit_erasures.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(e.id, e.created_at, e.document, e.signature,
                                       e.public_key).order_by(e.created_at, e.id)).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the erasures (run `otel-audit migrate`?): {exc}") from exc
    return [Erasure(str(r[0]), str(r[1]), str(r[2]), r[3], r[4]) for r in rows]


# ---------------------------------------------------------------------- verification


def _erased_rows_sql(dialect: str) -> str:
    """Rows that look erased: a digest kept or an erased value (a row that lost its salt
    otherwise no longer verifies: its digest cannot be recomputed)."""
    cols = ", ".join(f'CAST("{c}" AS TEXT)' if c in JSON_FIELDS and dialect == "postgresql"
                     else f'"{c}"' for c in _COLUMNS)
    marks = " OR ".join(f'"{c}" = \'{ERASED}\'' for c in PERSONAL_FIELDS)
    return (f"SELECT {cols} FROM audit_trails WHERE stream IS NOT NULL AND "
            f"(pii LIKE '%\"d\"%' OR {marks})")


def _fetch(engine: Engine, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(sql, list(params))
        rows = [tuple(r) for r in cursor.fetchall()]
        cursor.close()
        raw.commit()
        return rows
    finally:
        raw.close()


def _live_erased(engine: Engine) -> list[tuple[Any, ...]]:
    """Every erased-looking live row (a table scan: for callers without a walk)."""
    return _fetch(engine, _erased_rows_sql(engine.dialect.name))


def _live_by_id(engine: Engine, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """The live rows of ``ids`` (primary-key lookups, 500 at a time)."""
    dialect = engine.dialect.name
    mark = "?" if dialect == "sqlite" else "%s"
    cols = ", ".join(f'CAST("{c}" AS TEXT)' if c in JSON_FIELDS and dialect == "postgresql"
                     else f'"{c}"' for c in _COLUMNS)
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), 500):
        chunk = list(ids[start:start + 500])
        out += _fetch(engine, f"SELECT {cols} FROM audit_trails WHERE stream IS NOT NULL "
                      f"AND id IN ({', '.join([mark] * len(chunk))})", chunk)
    return out


def _looks_erased(row: Sequence[Any]) -> bool:
    pii = row[_PII]
    return (isinstance(pii, str) and '"d"' in pii) or any(
        row[_P0 + i] == ERASED for i in range(len(PERSONAL_FIELDS)))


def _archive_erased(archive_dir: Path) -> list[tuple[Any, ...]]:
    import duckdb

    from .sources import parquet_files

    files = parquet_files(archive_dir)
    if not files:
        return []
    names = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    relation = f"read_parquet([{names}], union_by_name = true, hive_partitioning = false)"
    cols = ", ".join(f'CAST("{c}" AS VARCHAR)' if c in JSON_FIELDS else f'"{c}"'
                     for c in _COLUMNS)
    marks = " OR ".join(f'"{c}" = \'{ERASED}\'' for c in PERSONAL_FIELDS)
    con = duckdb.connect()
    try:
        return [tuple(r) for r in con.execute(
            f"SELECT {cols} FROM {relation} WHERE stream IS NOT NULL AND "
            f"(pii LIKE '%\"d\"%' OR {marks})").fetchall()]
    except duckdb.Error:
        return []  # unreadable archives are reported by the archive checks
    finally:
        con.close()


def _json_leftovers(text: Any, keys: frozenset[str]) -> bool:
    """Whether a JSON text holds anything but ``[erased]`` under one of ``keys``."""
    if text is None or not keys:
        return False
    try:
        stack = [json.loads(text)]
    except (TypeError, ValueError):
        return True
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if k in keys and v != ERASED:
                    return True
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _row_problem(row: Sequence[Any], entry: dict[str, Any] | None) -> str | None:
    """Why an erased-looking row is not a valid erasure (``None``: it is)."""
    info = pii_info(row[_PII]) if isinstance(row[_PII], str) else None
    if info is None or info[1] is None:
        return "personal values erased without an erasure's digest"
    if entry is None:
        return "erased, but no erasure lists this record (forged, or its erasure deleted)"
    if entry.get("d") != info[1]:
        return "its digest is not the one its erasure recorded"
    if row[_SALT] is not None:
        return "an erased record still holds a salt"
    for i, name in enumerate(PERSONAL_FIELDS):
        if row[_P0 + i] not in (ERASED, None):
            return f"an erased record holds a value in {name} (rewritten after the erasure)"
    keys = frozenset(info[0] or [])
    if any(_json_leftovers(row[_JSON0 + i], keys) for i in range(len(JSON_FIELDS))):
        return "an erased record holds a value under a personal JSON key"
    return None


def _present_ids(engine: Engine, ids: list[str]) -> set[str]:
    """Which of ``ids`` are live rows."""
    from ..store.schema import audit_trails

    found: set[str] = set()
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            found.update(str(r) for r in conn.execute(
                select(audit_trails.c.id).where(audit_trails.c.id.in_(chunk))).scalars())
    return found


def check_erasures(engine: Engine, *, archive_dir: str | Path | None = None,
                   public_key: PublicKeys | None = None,
                   erasures: Iterable[Erasure] | None = None,
                   erased_ids: Sequence[str] | None = None) -> list[Finding]:
    """Findings about erased rows and erasures (see the module docstring).

    ``erased_ids`` are the live records with a kept digest that the chain walk met: only
    those and the rows the erasures list are then read (by primary key), instead of a
    scan of the table. A record that looks erased without a digest fails the chain
    check on its own (its digest can no longer be recomputed).
    """
    findings: list[Finding] = []
    listed: dict[str, dict[str, Any]] = {}
    stored = list(all_erasures(engine) if erasures is None else erasures)
    record_ids: dict[str, str] = {}
    for erasure in stored:
        try:
            entries = erasure.rows()
            record = erasure.record_id()
        except (ValueError, TypeError, AttributeError):
            findings.append(Finding("erasure", None, None, None,
                                    f"erasure {erasure.id} is malformed"))
            continue
        if public_key is None:
            findings.append(Finding("unauthenticated", None, None, None,
                                    f"erasure {erasure.id} ({len(entries)} records) cannot be "
                                    "authenticated without the signing public key"))
        elif not erasure.signature:
            findings.append(Finding("unauthenticated", None, None, None,
                                    f"erasure {erasure.id} ({len(entries)} records) is not "
                                    "signed: anyone with the database could have written it"))
        elif not erasure.signature_ok(public_key):
            findings.append(Finding("bad_signature", None, None, None,
                                    f"erasure {erasure.id} signature does not verify"))
        if record is not None:
            record_ids[record] = erasure.id
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                listed[entry["id"]] = entry
    if erased_ids is None:
        rows = _live_erased(engine)
        seen = {row[2] for row in rows}
        rows += _live_by_id(engine, [i for i in listed if i not in seen])
    else:
        rows = _live_by_id(engine, sorted(set(erased_ids) | set(listed)))
    if archive_dir is not None and Path(archive_dir).is_dir():
        rows += _archive_erased(Path(archive_dir))
    judged: set[str] = set()
    for row in rows:
        if row[2] in judged:
            continue
        judged.add(row[2])
        if _looks_erased(row):
            problem = _row_problem(row, listed.get(row[2]))
        elif row[2] in listed:
            problem = ("an erasure lists this record, but it holds personal values (restored "
                       "after the erasure?)")
        else:
            problem = None
        if problem is not None:
            findings.append(Finding("erasure", row[0], row[1], row[2], problem))
    if record_ids:
        present = _present_ids(engine, list(record_ids))
        if archive_dir is not None and Path(archive_dir).is_dir():
            present |= _archived_ids(Path(archive_dir), list(record_ids))
        for record, erasure_id in record_ids.items():
            if record not in present:
                findings.append(Finding("erasure", None, None, record,
                                        f"the ERASE record of erasure {erasure_id} is missing"))
    return findings


def _archived_ids(archive_dir: Path, ids: list[str]) -> set[str]:
    import duckdb

    from .sources import parquet_files

    files = parquet_files(archive_dir)
    if not files:
        return set()
    names = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    con = duckdb.connect()
    try:
        return {str(r[0]) for r in con.execute(
            f"SELECT id FROM read_parquet([{names}], union_by_name = true, "
            "hive_partitioning = false) WHERE list_contains(?, id)", [ids]).fetchall()}
    except duckdb.Error:
        return set()
    finally:
        con.close()
