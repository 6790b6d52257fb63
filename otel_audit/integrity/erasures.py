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
from .canonical import CHAIN_ROW_COLUMNS, FORMAT, pii_info
from .erased_rows import (  # ERASED and the row helpers: part of this module's API
    ERASED,
    content_digest,
    covered_columns,
    location_text,
    personal_leftovers,
    pii_parts,
    value_at,
)
from .keys import PublicKeys, public_key_hex, sign, signature_valid
from .sources import chain_row_select
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
    "content_digest",
    "covered_columns",
    "erasure_entry",
    "latest_entries",
    "location_text",
    "new_erasure",
    "personal_leftovers",
    "store_erasure",
    "value_at",
]

#: ``format`` member of an erasure document (the signed bytes are the document's text).
ERASURE_FORMAT = f"{FORMAT}/erasure"

_POS = {name: i for i, name in enumerate(CHAIN_ROW_COLUMNS)}
_SALT, _PII, _HASH = _POS["pii_salt"], _POS["pii"], _POS["hash"]
_ID, _STREAM, _SEQ = _POS["id"], _POS["stream"], _POS["seq"]


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


def _select(dialect: str) -> str:
    return chain_row_select(dialect)


def _erased_rows_sql(dialect: str) -> str:
    """Rows that look erased: a digest kept or an erased value (a row that lost its salt
    otherwise no longer verifies: its digest cannot be recomputed)."""
    marks = " OR ".join(f"\"{c}\" = '{ERASED}'" for c in PERSONAL_FIELDS
                        if c not in JSON_FIELDS)
    return (f"SELECT {_select(dialect)} FROM audit_trails WHERE stream IS NOT NULL AND "
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
    """The live chain rows of ``ids`` (primary-key lookups, 500 at a time)."""
    dialect = engine.dialect.name
    mark = "?" if dialect == "sqlite" else "%s"
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), 500):
        chunk = list(ids[start:start + 500])
        out += _fetch(engine, f"SELECT {_select(dialect)} FROM audit_trails WHERE stream IS "
                      f"NOT NULL AND id IN ({', '.join([mark] * len(chunk))})", chunk)
    return out


def _looks_erased(row: Sequence[Any]) -> bool:
    pii = row[_PII]
    return (isinstance(pii, str) and '"d"' in pii) or any(
        row[_POS[name]] == ERASED for name in PERSONAL_FIELDS)


def _archive_rows(archive_dir: Path, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """Archived chain rows that look erased or that an erasure lists."""
    import duckdb

    from .sources import parquet_files

    files = parquet_files(archive_dir)
    if not files:
        return []
    names = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    relation = f"read_parquet([{names}], union_by_name = true, hive_partitioning = false)"
    marks = " OR ".join(f"\"{c}\" = '{ERASED}'" for c in PERSONAL_FIELDS
                        if c not in JSON_FIELDS)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        # files written before a column existed read it as NULL
        own = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
        extra = "".join(f', CAST(NULL AS VARCHAR) AS "{c}"' for c in CHAIN_ROW_COLUMNS
                        if c not in own)
        con.execute(f"CREATE TEMP VIEW archived AS SELECT *{extra} FROM {relation}")
        return [tuple(r) for r in con.execute(
            f"SELECT {_select('duckdb')} FROM archived WHERE stream IS NOT NULL AND "
            f"(pii LIKE '%\"d\"%' OR {marks} OR list_contains(?, id))", [list(ids)]
        ).fetchall()]
    except duckdb.Error:
        return []  # unreadable archives are reported by the archive checks
    finally:
        con.close()


def _classic_problem(row: Sequence[Any], entry: dict[str, Any]) -> str | None:
    """Why a row an erasure of all its personal values lists is not so erased."""
    if not _looks_erased(row):
        return ("an erasure lists this record, but it holds personal values (restored "
                "after the erasure?)")
    info = pii_info(row[_PII]) if isinstance(row[_PII], str) else None
    if info is None or info[1] is None:
        return "personal values erased without an erasure's digest"
    if entry.get("d") != info[1]:
        return "its digest is not the one its erasure recorded"
    if row[_SALT] is not None:
        return "an erased record still holds a salt"
    for location in entry.get("at", []):
        if value_at(row, location) != ERASED:
            return (f"an erased record holds a value at {location_text(location)} "
                    "(rewritten after the erasure)")
    leftovers = personal_leftovers(row)
    for name in leftovers:
        if name != "key":
            return f"an erased record holds a value in {name} (rewritten after the erasure)"
    if leftovers:
        return "an erased record holds a value under a personal JSON key"
    return None


def _row_problem(row: Sequence[Any], entry: dict[str, Any] | None) -> str | None:
    """Why a row that looks erased or that an erasure lists is not a valid erasure."""
    if entry is None:
        info = pii_info(row[_PII]) if isinstance(row[_PII], str) else None
        if info is None or info[1] is None:
            return "personal values erased without an erasure's digest"
        return "erased, but no erasure lists this record (forged, or its erasure deleted)"
    if "h" not in entry:
        return _classic_problem(row, entry)
    kept = pii_parts(row)[1]
    if entry.get("d") != kept:
        return "its digest is not the one its erasure recorded"
    for location in entry.get("at", []):
        if value_at(row, location) != ERASED:
            return (f"an erasure lists this record, but it holds a value at "
                    f"{location_text(location)} (restored or rewritten after the erasure)")
    if row[_HASH] != entry.get("hash"):
        return "its hash is not the one its erasure recorded"
    if content_digest(row) != entry["h"]:
        return "its content is not the one its erasure recorded (rewritten after the erasure)"
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


def latest_entries(erasures: Iterable[Erasure]) -> dict[str, dict[str, Any]]:
    """``record ID -> its entry in the newest erasure listing it`` (malformed skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for erasure in erasures:
        try:
            entries = erasure.rows()
        except (ValueError, TypeError, AttributeError):
            continue
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                out[entry["id"]] = entry
    return out


def check_erasures(engine: Engine, *, archive_dir: str | Path | None = None,
                   public_key: PublicKeys | None = None,
                   erasures: Iterable[Erasure] | None = None,
                   erased_ids: Sequence[str] | None = None,
                   rewritten: set[str] | None = None) -> list[Finding]:
    """Findings about erased rows and erasures (see the module docstring).

    ``erased_ids`` are the live records with a kept digest that the chain walk met: only
    those and the rows the erasures list are then read (by primary key), instead of a
    scan of the table. A record that looks erased without a digest fails the chain
    check on its own (its digest can no longer be recomputed).

    ``rewritten`` receives the IDs of the records whose content an erasure rewrote
    (``h``: no longer matching their chain hash) and that match it, when that erasure's
    signature verifies with ``public_key``: their ``modified`` finding is the erasure's.
    """
    findings: list[Finding] = []
    listed: dict[str, tuple[dict[str, Any], bool]] = {}
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
        authentic = False
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
        else:
            authentic = True
        if record is not None:
            record_ids[record] = erasure.id
        for entry in entries:
            # a record of no chain has no proof an erasure could keep (verify reports it)
            if isinstance(entry, dict) and isinstance(entry.get("id"), str) \
                    and entry.get("chained") is not False:
                listed[entry["id"]] = (entry, authentic)
    if erased_ids is None:
        rows = _live_erased(engine)
        seen = {row[_ID] for row in rows}
        rows += _live_by_id(engine, [i for i in listed if i not in seen])
    else:
        rows = _live_by_id(engine, sorted(set(erased_ids) | set(listed)))
    if archive_dir is not None and Path(archive_dir).is_dir():
        rows += _archive_rows(Path(archive_dir), sorted(listed))
    judged: set[str] = set()
    for row in rows:
        if row[_ID] in judged:
            continue
        judged.add(row[_ID])
        found = listed.get(row[_ID])
        if found is None and not _looks_erased(row):
            continue
        row_entry, authentic = found if found is not None else (None, False)
        problem = _row_problem(row, row_entry)
        if problem is not None:
            findings.append(Finding("erasure", row[_STREAM], row[_SEQ], row[_ID], problem))
        elif row_entry is not None and "h" in row_entry and authentic \
                and rewritten is not None:
            rewritten.add(row[_ID])
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
