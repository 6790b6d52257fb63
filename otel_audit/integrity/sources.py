"""Reading chain rows fast: straight from the driver (SQLite, psycopg) or Parquet (DuckDB).

Each source yields tuples in :data:`~otel_audit.integrity.canonical.CHAIN_ROW_COLUMNS`
order, sorted by ``(stream, seq)``, in large batches and with the conversions done by
the database (timestamp text in UTC, booleans as 0/1, JSON as text), so the verifier's
Python loop only hashes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Collection, Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy import Engine

from ..errors import IntegrityError
from ..fields import JSON_FIELDS
from .canonical import (
    CHAIN_ROW_COLUMNS,
    EXACT_FORMAT,
    EXACT_VERSION,
    FORMAT,
    LEGACY_PERSONAL_FIELDS,
    PUBLIC_FORMAT,
    PUBLIC_VERSION,
    chain_hash,
    hash_payload,
    mac_ok,
    v1_float_spellings,
)
from .fastwalk import FULL, SQLITE, Plan, payload_plans, sqlite_payload
from .pgcopy import copied_rows, copy_kinds
from .seqindex import MAX_SEQ, NO_STREAM_OR_SEQ_SQL, STREAM_ENDS_SQL, UNCHAINED, MalformedSeq

__all__ = ["ArchiveSource", "StoreSource", "chain_row_select"]

_BATCH = 20_000
#: SQLite rows fetched at once: a batch small enough to stay in the CPU's caches between
#: the driver's fetch and the check that reads it again (20,000 rows of about 1 kB each
#: do not, and cost about a tenth more CPU a record).
_SQLITE_FETCH = 1_000

_BOOLS = ("requires_review", "success")
_JSON = JSON_FIELDS


#: The payload's format tag of a row of format 1 or 2, chosen by its schema_version
#: (canonical.row_version).
_FORMAT_SQL = (f"CASE WHEN schema_version >= {EXACT_VERSION} THEN '{EXACT_FORMAT}' "
               f"ELSE '{FORMAT}' END")


def _columns_sql(names: tuple[str, ...]) -> str:
    return ", ".join(f'"{n}"' for n in names)


#: The format tag of a row (canonical.row_version, format_tag): the last value of a
#: source row of the whole chain row (fastwalk.FULL).
_TAG_SQL = (f"CASE WHEN schema_version >= {PUBLIC_VERSION} THEN '{PUBLIC_FORMAT}' "
            f"ELSE {_FORMAT_SQL} END")
#: SQLite: the format tag and the chain row as one JSON array (fastwalk.SQLITE), the
#: elements escaped by SQLite as the sealer's encoder escapes them: one text a row for
#: the driver to build instead of thirty values.
_SQLITE_ARRAY_SQL = f"json_array({_TAG_SQL}, {_columns_sql(CHAIN_ROW_COLUMNS)})"

def _duplicate_column(name: str) -> str:
    if name in ("stream", "seq", "prev_hash", "hash", "pii", "schema_version", "mac"):
        return f'd."{name}"'
    if name in LEGACY_PERSONAL_FIELDS or name == "pii_salt":
        return f'CAST(NULL AS TEXT) AS "{name}"'  # the digest stands for them (erased form)
    return f't."{name}"'


#: ``audit_duplicates`` as chain rows: the stored record with the noted seal's position,
#: hashes, schema_version and erased-form ``pii`` (see integrity.install.DuplicateSeals).
_DUPLICATES = ("(SELECT " + ", ".join(_duplicate_column(n) for n in CHAIN_ROW_COLUMNS)
               + " FROM audit_duplicates d JOIN audit_trails t ON t.id = d.id) AS audit_trails")


def _with_duplicates(rows: Iterator[tuple[Any, ...]],
                     duplicates: dict[str, list[tuple[Any, ...]]]) -> Iterator[tuple[Any, ...]]:
    """``rows`` with the duplicate rows of each stream put in ``seq`` order; a stream's
    rows stay together whatever order the database sorts stream names in."""
    current: str | None = None
    pending: list[tuple[Any, ...]] = []
    for row in rows:
        if row[0] != current:
            yield from pending
            current = row[0]
            pending = duplicates.pop(row[0], [])
        while pending and pending[0][1] < row[1]:
            yield pending.pop(0)
        yield row
    yield from pending
    for rest in duplicates.values():
        yield from rest


#: Every source row starts with these, then the source's own columns.
HEADER = ("stream", "seq", "prev_hash", "hash", "id", "pii")
#: Where the chain row ends in a source row of the whole chain row.
_CHAIN_END = len(HEADER) + len(CHAIN_ROW_COLUMNS)
_HEADER_SQL = ", ".join(f'"{name}"' for name in HEADER)
#: Where the chain row holds each column of ``HEADER``: a source row read as COPY text
#: is ``HEADER`` taken from its chain row, the chain row, the format tag.
_COPY_ORDER = (*(CHAIN_ROW_COLUMNS.index(name) for name in HEADER),
               *range(len(CHAIN_ROW_COLUMNS) + 1))


def chain_row_select(dialect: str, present: Collection[str] | None = None) -> str:
    """The SELECT list producing chain rows on ``dialect`` (sqlite, postgresql, duckdb).

    ``present`` names the source's columns when it may lack the later layouts' (Parquet
    files archived before migration 0008): a missing one reads as NULL.
    """
    out = []
    for name in CHAIN_ROW_COLUMNS:
        col = f'"{name}"'
        if present is not None and name not in present:
            out.append(f'CAST(NULL AS VARCHAR) AS "{name}"')
        elif name == "timestamp":
            if dialect == "postgresql":
                out.append(f"to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
            elif dialect == "duckdb":
                out.append(f"strftime(CAST({col} AS TIMESTAMPTZ), '%Y-%m-%d %H:%M:%S.%f')")
            else:
                out.append(col)
        elif name in _BOOLS and dialect != "sqlite":
            out.append(f"CAST({col} AS INTEGER)")
        elif name in _JSON and dialect != "sqlite":
            out.append(f"CAST({col} AS {'TEXT' if dialect == 'postgresql' else 'VARCHAR'})")
        else:
            out.append(col)
    return ", ".join(out)


def _where(stream: str | None, placeholder: str) -> tuple[str, list[Any]]:
    if stream is None:
        return "WHERE stream IS NOT NULL", []
    return f"WHERE stream = {placeholder}", [stream]


class StoreSource:
    """Chain rows of the live store behind ``engine`` (SQLite or PostgreSQL).

    On SQLite, SQLite itself builds most of the hashed payload (``json_array`` escapes
    exactly like the sealer's encoder), so Python fetches a dozen values per row instead
    of thirty; any row whose fast hash does not match is re-read in full and rechecked.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        #: IDs of rows the walk skips (malformed rows ``verify`` reports on their own)
        self.exclude: tuple[str, ...] = ()
        self._jsonb_columns: bool | None = None
        #: if a list: :meth:`batches` adds the IDs of the rows it reads without a hash
        self.hashless: list[str] | None = None
        self._plans_of: tuple[bytes | None, dict[str, Plan]] | None = None

    def _placeholder(self) -> str:
        return "?" if self.dialect == "sqlite" else "%s"

    def count(self, stream: str | None = None) -> int:
        """How many chained rows there are (for the progress bar)."""
        where, params = _where(stream, self._placeholder())
        return int(self._scalar(f"SELECT COUNT(*) FROM audit_trails {where}", params) or 0)

    def unchained(self, hashless: list[str] | None = None) -> list[str]:
        """IDs of rows that belong to no chain (up to 1000): no stream, seq or hash.

        ``hashless``: the IDs of the rows with a stream and a seq but no hash, collected
        by a walk that read every such row (:attr:`hashless`), instead of a pass over
        the table; with more than 1000 in all, the pass names which.
        """
        if hashless is None:
            return [r[0] for r in self._all(
                "SELECT id FROM audit_trails WHERE stream IS NULL OR seq IS NULL "
                f"OR hash IS NULL LIMIT {UNCHAINED}", [])]
        found = [r[0] for r in self._all(NO_STREAM_OR_SEQ_SQL, [])] + hashless
        return found if len(found) <= UNCHAINED else self.unchained()

    def starts_since(self, since: dt.datetime) -> dict[str, int]:
        """Per stream, the first ``seq`` whose record is at or after ``since``."""
        text = since.astimezone(dt.UTC).isoformat(" ", "microseconds")[:26]
        arg: Any = text if self.dialect == "sqlite" else since
        rows = self._all(
            "SELECT stream, MIN(seq) FROM audit_trails WHERE stream IS NOT NULL AND "
            f"timestamp >= {self._placeholder()} GROUP BY stream", [arg])
        return {stream: int(seq) for stream, seq in rows}

    def seqs_by_hash(self, stream: str, hashes: list[str]) -> dict[str, int]:
        """``hash -> seq`` of the given hashes in ``stream``."""
        if not hashes:
            return {}
        ph = self._placeholder()
        marks = ", ".join([ph] * len(hashes))
        rows = self._all(
            f"SELECT hash, seq FROM audit_trails WHERE stream = {ph} AND hash IN ({marks})",
            [stream, *hashes])
        return {h: int(s) for h, s in rows}

    def chain_row(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The full chain row of a source row (re-read by ``id`` in the SQLite fast path)."""
        if self.dialect != "sqlite":
            return row[len(HEADER):_CHAIN_END]
        found = self._all(f"SELECT {chain_row_select('sqlite')} FROM audit_trails "
                          "WHERE id = ?", [row[4]])
        return found[0] if found else ()

    def content_ok(self, row: tuple[Any, ...], key: bytes | None) -> bool:
        """Whether a source row's content matches its hash (and, verified with the
        chain's key, a format-3 row's ``mac`` its hash: :func:`~.canonical.mac_ok`)."""
        if self.dialect == "sqlite":
            # no JSON personal keys, not erased: the payload from SQLite's array holds
            built = (sqlite_payload(row, self._plans(key), any_salt=True)
                     if row[5] is None else None)
            if built is not None:
                plan, personal, payload, _ = built
                digest = sha256(personal).hexdigest()
                if hash_payload(b'%s,null,"%s"]' % (payload, digest.encode()),
                                plan[0]) == row[3] and plan[1] is None:
                    return True  # (a mac to check: the full row below)
            elif row[5] is not None and type(row[6]) is str:  # the chain row, from the array
                chain = tuple(json.loads(row[6])[1:])
                if chain_hash(chain, key, canonicalise=False) == row[3]:
                    return mac_ok(chain, key)
            full = self.chain_row(row)
            if not full:
                return False
            if chain_hash(full, key, canonicalise=True) == row[3]:
                return mac_ok(full, key)
            # a format-1 number the pre-0004 schema stored as an INTEGER (0 for 0.0)
            return any(chain_hash(v, key, canonicalise=True) == row[3]
                       for v in v1_float_spellings(full))
        chain = row[len(HEADER):_CHAIN_END]
        return chain_hash(chain, key, canonicalise=True,
                          unique_keys=self._jsonb()) == str(row[3]) and mac_ok(chain, key)

    def _plans(self, key: bytes | None) -> dict[str, Plan]:
        """The SQLite layout's payload plans under ``key`` (kept for the last key)."""
        if self._plans_of is None or self._plans_of[0] != key:
            self._plans_of = (key, payload_plans(key, SQLITE))
        return self._plans_of[1]

    def _jsonb(self) -> bool:
        """Whether every JSON column is PostgreSQL ``JSONB`` (which cannot hold a duplicate
        key, so the verifier need not look for one); asked once."""
        if self._jsonb_columns is None:
            found = self._scalar(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_name = "
                "'audit_trails' AND table_schema = current_schema() AND data_type = 'jsonb' "
                f"AND column_name IN ({', '.join(repr(name) for name in _JSON)})", [])
            self._jsonb_columns = found == len(_JSON)
        return self._jsonb_columns

    def stream_ranges(self) -> list[tuple[str, int, int]]:
        """``(stream, first seq, last seq)`` of every stream, in stream order."""
        sql = STREAM_ENDS_SQL
        if self._has_duplicates():  # a stream may start or end with a noted duplicate
            sql = ("SELECT stream, MIN(seq), MAX(seq) FROM (SELECT stream, seq FROM "
                   "audit_trails UNION ALL SELECT stream, seq FROM audit_duplicates) AS "
                   "chained WHERE stream IS NOT NULL GROUP BY stream ORDER BY stream")
        found = self._all(sql, [])
        for _, lo, hi in found:
            # SQLite orders reals among the integers and texts and BLOBs after them: with
            # both ends integers, every other seq lies inside a range of :meth:`batches`
            if type(lo) is not int or type(hi) is not int:
                raise MalformedSeq(f"a stream's seqs run from {lo!r} to {hi!r}")
        return [(stream, lo, hi) for stream, lo, hi in found]

    def _has_duplicates(self) -> bool:
        """Whether ``audit_duplicates`` holds a row (absent before revision 0005: no)."""
        try:
            return bool(self._all("SELECT 1 FROM audit_duplicates LIMIT 1", []))
        except Exception:
            return False

    @property
    def layout(self) -> int:
        """The row layout (:mod:`.fastwalk`): SQLite's payload arrays, or whole chain rows
        with the format tag."""
        return SQLITE if self.dialect == "sqlite" else FULL

    def rows(self, stream: str | None = None, seq_range: tuple[int, int] | None = None,
             ) -> Iterator[tuple[Any, ...]]:
        """Source rows (``HEADER`` first) ordered by ``(stream, seq)``."""
        for batch in self.batches(stream, seq_range):
            yield from batch

    def batches(self, stream: str | None = None, seq_range: tuple[int, int] | None = None,
                ) -> Iterator[list[tuple[Any, ...]]]:
        """:meth:`rows` as lists of the rows the driver fetches at once (up to 20,000;
        1,000 on SQLite).

        SQLite rows: ``HEADER``, then the format tag and the chain row as one JSON array
        (fastwalk.SQLITE). Elsewhere: ``HEADER``, the chain row, the format tag.
        ``seq_range`` ``(first, last)``: the seqs from ``first`` up to ``last + 1``
        (excluded), so that consecutive ranges leave no non-integer seq out.
        """
        ph = self._placeholder()
        where, params = _where(stream, ph)
        if seq_range is not None:
            first, last = seq_range
            where += f" AND seq >= {ph}"
            params.append(first)
            if last < MAX_SEQ:
                where += f" AND seq < {ph}"
                params.append(last + 1)
        if self.exclude:
            where += f" AND id NOT IN ({', '.join([ph] * len(self.exclude))})"
            params += list(self.exclude)
        if self.dialect == "sqlite":
            cols = _SQLITE_ARRAY_SQL
        else:
            cols = f"{chain_row_select(self.dialect)}, {_TAG_SQL}"
        sql = (f"SELECT {_HEADER_SQL}, {cols} FROM audit_trails {where} "
               "ORDER BY stream, seq")
        duplicates = self._duplicate_rows(f"SELECT {_HEADER_SQL}, {cols} FROM "
                                          f"{_DUPLICATES} {where}", params)
        copied = None
        if self.dialect == "postgresql":  # the chain row and tag, the header from them
            copied = f"SELECT {cols} FROM audit_trails {where} ORDER BY stream, seq"
        batches = self._stored_rows(sql, params, copied)
        if self.hashless is not None:
            batches = _noting_hashless(batches, self.hashless)
        if not duplicates:
            yield from batches
            return
        merged = _with_duplicates((row for batch in batches for row in batch), duplicates)
        while True:
            batch = list(itertools.islice(merged, _BATCH))
            if not batch:
                break
            yield batch

    def _duplicate_rows(self, sql: str, params: list[Any]) -> dict[str, list[tuple[Any, ...]]]:
        """Rows of ``audit_duplicates`` as chain rows of the stored record they repeat,
        by stream, in ``seq`` order (none where the table is empty or absent)."""
        if not self._has_duplicates():
            return {}
        out: dict[str, list[tuple[Any, ...]]] = {}
        for row in sorted(self._all(sql, params), key=lambda r: r[1]):
            out.setdefault(row[0], []).append(row)
        return out

    def _stored_rows(self, sql: str, params: list[Any], copied: str | None = None,
                     ) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of ``sql`` in batches; on PostgreSQL, those of ``copied`` (the same
        rows without ``HEADER``) read as COPY text where :func:`.pgcopy.copy_kinds` allows."""
        raw = self.engine.raw_connection()
        try:
            kinds = None if copied is None else copy_kinds(raw.driver_connection, copied,
                                                           params)
            if copied is not None and kinds is not None:
                yield from copied_rows(raw.driver_connection, copied, params, kinds, _COPY_ORDER)
                return
            if self.dialect == "postgresql":
                cursor = raw.driver_connection.cursor(name="otel_audit_verify")  # type: ignore[union-attr]
                cursor.itersize = _BATCH
            else:
                cursor = raw.cursor()
            size = _SQLITE_FETCH if self.dialect == "sqlite" else _BATCH
            cursor.execute(sql, params)
            while True:
                batch = cursor.fetchmany(size)
                if not batch:
                    break
                yield batch
            cursor.close()
        finally:
            raw.close()

    def _all(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(sql, params)
            out = [tuple(r) for r in cursor.fetchall()]
            cursor.close()
            raw.commit()
            return out
        finally:
            raw.close()

    def _scalar(self, sql: str, params: list[Any]) -> Any:
        rows = self._all(sql, params)
        return rows[0][0] if rows else None


def _noting_hashless(batches: Iterator[list[tuple[Any, ...]]],
                     into: list[str]) -> Iterator[list[tuple[Any, ...]]]:
    for batch in batches:
        into.extend([row[4] for row in batch if row[3] is None])
        yield batch


def _duckdb() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def parquet_files(directory: Path) -> list[Path]:
    """Parquet files of an archive directory, in a stable order."""
    return sorted(directory.rglob("*.parquet"))


class ArchiveSource:
    """Chain rows of the Parquet archives under ``directory`` (read with DuckDB)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.files = parquet_files(self.directory)

    def _relation(self) -> str:
        files = ", ".join("'" + str(f).replace("'", "''") + "'" for f in self.files)
        return f"read_parquet([{files}], union_by_name = true, hive_partitioning = false)"

    def mac_count(self, stream: str | None = None) -> int:
        """How many archived chained rows carry a ``mac`` (none in files from before
        migration 0008)."""
        if not self.files or "mac" not in self._columns():
            return 0
        where, params = _where(stream, "?")
        row = self._query(f"SELECT COUNT(*) FROM {self._relation()} {where} AND mac IS NOT "
                          "NULL", params).fetchone()
        return int(row[0]) if row else 0

    def _columns(self) -> set[str]:
        """The columns the archive files hold (files from before migration 0008 lack
        the later layouts' columns)."""
        described = self._query(f"DESCRIBE SELECT * FROM {self._relation()}", []).fetchall()
        return {str(row[0]) for row in described}

    def _query(self, sql: str, params: list[Any]) -> duckdb.DuckDBPyConnection:
        con = _duckdb()
        try:
            return con.execute(sql, params)
        except duckdb.Error as exc:
            raise IntegrityError(f"cannot read the archives in {self.directory}: {exc}") from exc

    def count(self, stream: str | None = None) -> int:
        """How many archived rows there are."""
        if not self.files:
            return 0
        where, params = _where(stream, "?")
        row = self._query(f"SELECT COUNT(*) FROM {self._relation()} {where}", params).fetchone()
        return int(row[0]) if row else 0

    def starts_since(self, since: dt.datetime) -> dict[str, int]:
        """Per stream, the first archived ``seq`` at or after ``since``."""
        if not self.files:
            return {}
        rows = self._query(
            f"SELECT stream, MIN(seq) FROM {self._relation()} WHERE stream IS NOT NULL AND "
            "CAST(timestamp AS TIMESTAMPTZ) >= ? GROUP BY stream", [since]).fetchall()
        return {stream: int(seq) for stream, seq in rows}

    def seqs_by_hash(self, stream: str, hashes: list[str]) -> dict[str, int]:
        """``hash -> seq`` of the given hashes in ``stream``."""
        if not self.files or not hashes:
            return {}
        rows = self._query(
            f"SELECT hash, seq FROM {self._relation()} WHERE stream = ? AND "
            "list_contains(?, hash)", [stream, hashes]).fetchall()
        return {h: int(s) for h, s in rows}

    def chain_row(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The full chain row of a source row."""
        return row[len(HEADER):]

    def content_ok(self, row: tuple[Any, ...], key: bytes | None) -> bool:
        """Whether an archived row's content matches its hash."""
        chain = row[len(HEADER):]
        if chain_hash(chain, key, canonicalise=False) == row[3]:
            return mac_ok(chain, key)
        return chain_hash(chain, key, canonicalise=True) == str(row[3]) and mac_ok(chain, key)

    def rows(self, stream: str | None = None) -> Iterator[tuple[Any, ...]]:
        """Archived source rows (``HEADER`` first) ordered by ``(stream, seq)``."""
        if not self.files:
            return
        where, params = _where(stream, "?")
        cursor = self._query(
            f"SELECT {_HEADER_SQL}, {chain_row_select('duckdb', self._columns())} "
            f"FROM {self._relation()} {where} ORDER BY stream, seq", params)
        while True:
            batch = cursor.fetchmany(_BATCH)
            if not batch:
                break
            yield from batch
