"""Erasure of every personal reference to one subject (GDPR Art. 17): ``forget``.

``forget(engine, "bob")`` erases bob's personal values from the live store and the
Parquet archives: every personal value of bob's own rows, and in anyone's rows bob (or
bob's email, learned from bob's own rows or given) as ``user_email``, ``acting_as``, a
``delegation_chain`` principal, a user ``resource_id`` and a value under a subject key
inside the JSON documents (:class:`~otel_audit.integrity.subjects.SubjectMatchers`).
Hashes are kept (``docs/integrity.md``): a value the hash covers through the personal
digest keeps the digest; a row whose hash no longer proves it is bound to the erasure
document by its content digest. The document lists every erased location, is stored in
``audit_erasures`` in the same transaction as the live rows' update, and is signed, so
``verify --public-key`` still passes and any later rewrite is found.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from .analytics.duck import sql_literal
from .errors import StoreError
from .integrity.archives import file_sha256, load_manifest, save_manifest
from .integrity.canonical import CHAIN_ROW_COLUMNS
from .integrity.erasures import (
    ERASED,
    Erasure,
    all_erasures,
    latest_entries,
    new_erasure,
    store_erasure,
)
from .integrity.sources import chain_row_select
from .integrity.subjects import WRITTEN, RowErasure, Subject, SubjectMatchers, erase_row
from .record import JSON_FIELDS
from .store.schema import PERSONAL_FIELDS

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .trail import AuditTrail

__all__ = ["ERASED", "ForgetReport", "SubjectMatchers", "forget", "row_erasure"]

_POS = {name: i for i, name in enumerate(CHAIN_ROW_COLUMNS)}
#: Columns compared with the subject's identifiers in the candidates' query.
_TEXT_COLUMNS = tuple(c for c in (*PERSONAL_FIELDS, "acting_as", "resource_id")
                      if c not in JSON_FIELDS)
_NONE = "(none)"


@dataclass(slots=True)
class ForgetReport:
    """What one erasure did: records (live, archived), erased values per column, records
    per action and resource type, and the erasure's ID."""

    live: int = 0
    archived: int = 0
    files: list[str] = field(default_factory=list)
    erasure_id: str | None = None
    #: values erased (one per location: a column, or a value inside a JSON column)
    values: int = 0
    #: the subject's emails looked for (learned from its rows, or given)
    emails: int = 0
    by_column: dict[str, int] = field(default_factory=dict)
    by_action: dict[str, int] = field(default_factory=dict)
    by_resource_type: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (``otel-audit forget --format json``)."""
        return asdict(self)


def row_erasure(row: Sequence[Any]) -> dict[str, Any] | None:
    """The new values of a chain row with all its personal values erased (``None``:
    nothing left to erase): the column values :func:`forget` writes, ``id`` included."""
    erased = erase_row(row, None, SubjectMatchers(), own=True)
    return None if erased is None else erased.changes


def _like(value: str) -> str | None:
    """A LIKE pattern finding ``value`` inside a JSON text (``None``: it may be escaped)."""
    if not value.isascii() or not value.isprintable() or '"' in value or "\\" in value:
        return None
    escaped = value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _candidates(subject: Subject, columns: Iterable[str], mark: str, cast: str,
                ) -> tuple[str, list[Any]]:
    """A WHERE clause true for every row that may name ``subject`` (and more)."""
    names = sorted({i.lower() for i in subject.identifiers()})
    marks = ", ".join([mark] * len(names))
    terms: list[str] = [f"user_id = {mark}"]
    params: list[Any] = [subject.user_id]
    present = set(columns)
    for column in _TEXT_COLUMNS:
        if column in present:
            terms.append(f'lower("{column}") IN ({marks})')
            params += names
    for column in JSON_FIELDS:
        if column not in present:
            continue
        patterns = [p for p in map(_like, names) if p is not None]
        if len(patterns) < len(names):
            terms.append(f'"{column}" IS NOT NULL')
            continue
        for pattern in patterns:
            terms.append(f"lower(CAST(\"{column}\" AS {cast})) LIKE {mark} ESCAPE '\\'")
            params.append(pattern)
    return " OR ".join(terms), params


def _plan(rows: Iterable[Sequence[Any]], subject: Subject, matchers: SubjectMatchers,
          previous: dict[str, dict[str, Any]]) -> list[tuple[RowErasure, tuple[Any, ...]]]:
    out = []
    for row in rows:
        own = subject.names(row[_POS["user_id"]])
        erased = erase_row(row, subject, matchers, own=own, previous=previous.get(row[_POS["id"]]))
        if erased is not None:
            out.append((erased, tuple(row)))
    return out


def _emails(engine: Engine, user_id: str, archive: Path | None) -> set[str]:
    """The emails of the subject's own rows (live and archived)."""
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    sql = ("SELECT DISTINCT user_email FROM audit_trails WHERE user_id = {} AND "
           "user_email IS NOT NULL")
    try:
        with engine.connect() as conn:
            found = {r[0] for r in conn.exec_driver_sql(sql.format(mark), (user_id,))}
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the subject's records: {exc}") from exc
    for path in _parquet(archive):
        with _duck() as con:
            found |= {r[0] for r in con.execute(
                sql.format("?").replace("audit_trails", _source(path)), [user_id]).fetchall()}
    return {e for e in found if isinstance(e, str) and e != ERASED}


def _parquet(archive: Path | None) -> list[Path]:
    return sorted(archive.rglob("*.parquet")) if archive is not None and archive.is_dir() \
        else []


def _source(path: Path) -> str:
    return f"read_parquet({sql_literal(str(path))})"


class _duck:
    """A DuckDB connection in UTC, closed on exit; DuckDB errors become StoreError."""

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        return self.con

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.con.close()
        if isinstance(exc, duckdb.Error):
            raise StoreError(f"cannot erase the subject from the archives: {exc}") from exc


def _file_view(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """Make view ``f`` of an archive file with every chain column (missing ones NULL:
    files written before a column existed); return the file's own columns."""
    own = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {_source(path)}").fetchall()]
    missing = [c for c in CHAIN_ROW_COLUMNS if c not in own]
    extra = "".join(f', CAST(NULL AS VARCHAR) AS "{c}"' for c in missing)
    con.execute(f"CREATE OR REPLACE TEMP VIEW f AS SELECT *{extra} FROM {_source(path)}")
    return own


def _live_plan(engine: Engine, subject: Subject, matchers: SubjectMatchers,
               previous: dict[str, dict[str, Any]]) -> list[tuple[RowErasure, tuple[Any, ...]]]:
    dialect = engine.dialect.name
    where, params = _candidates(subject, CHAIN_ROW_COLUMNS, "?" if dialect == "sqlite"
                                else "%s", "TEXT")
    sql = (f"SELECT {chain_row_select(dialect)} FROM audit_trails "
           f"WHERE {where}")
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(sql, tuple(params)).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the subject's records: {exc}") from exc
    return _plan((tuple(r) for r in rows), subject, matchers, previous)


def _archive_plan(archive: Path, subject: Subject, matchers: SubjectMatchers,
                  previous: dict[str, dict[str, Any]],
                  ) -> list[tuple[Path, list[tuple[RowErasure, tuple[Any, ...]]]]]:
    out = []
    with _duck() as con:
        for path in _parquet(archive):
            own = _file_view(con, path)
            where, params = _candidates(subject, own, "?", "VARCHAR")
            rows = con.execute(f"SELECT {chain_row_select('duckdb')} FROM f WHERE {where}",
                               params).fetchall()
            plan = _plan(rows, subject, matchers, previous)
            if plan:
                out.append((path, plan))
    return out


def _erase_live(engine: Engine, changes: list[dict[str, Any]], erasure: Erasure | None) -> int:
    """Apply ``changes`` and store ``erasure`` in one transaction."""
    json_cast = "CAST({} AS JSONB)" if engine.dialect.name == "postgresql" else "{}"
    sets = ", ".join(f'"{n}" = ' + (json_cast.format(f":{n}") if n in JSON_FIELDS
                                    else f":{n}") for n in WRITTEN)
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.begin() as conn:
            if sqlite:  # overwrite the old values' bytes, not only unlink them
                before = conn.exec_driver_sql("PRAGMA secure_delete").scalar()
                conn.exec_driver_sql("PRAGMA secure_delete = ON")
            if changes:
                conn.execute(text(f"UPDATE audit_trails SET {sets} WHERE id = :id"), changes)
            if erasure is not None:
                store_erasure(conn, erasure)
            if sqlite:
                conn.exec_driver_sql(f"PRAGMA secure_delete = {int(before or 0)}")
        if sqlite:  # the pages holding the old values leave the WAL for the main file
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot erase the subject's records: {exc}") from exc
    return len(changes)


def _erase_archives(archive_dir: Path, files: list[tuple[Path, list[dict[str, Any]]]],
                    erasure_id: str | None,
                    signing_key: Ed25519PrivateKey | None) -> tuple[int, list[str]]:
    manifest = load_manifest(archive_dir)
    total, rewritten = 0, []
    with _duck() as con:
        for path, changes in files:
            own = set(_file_view(con, path))
            names = ["id", *(n for n in WRITTEN if n in own)]
            con.execute("CREATE OR REPLACE TEMP TABLE upd (" +
                        ", ".join(f'"{n}" VARCHAR' for n in names) + ")")
            con.executemany(f"INSERT INTO upd VALUES ({', '.join('?' * len(names))})",
                            [[c[n] for n in names] for c in changes])
            replace = ", ".join(
                f"CASE WHEN u.id IS NULL THEN a.\"{n}\" ELSE "
                f"CAST(u.\"{n}\" AS {'JSON' if n in JSON_FIELDS else 'VARCHAR'}) END AS \"{n}\""
                for n in names[1:])
            tmp = path.with_name(path.name + ".tmp")
            con.execute(f"COPY (SELECT a.* REPLACE ({replace}) FROM {_source(path)} a "
                        "LEFT JOIN upd u ON a.id = u.id ORDER BY a.stream, a.seq) "
                        f"TO {sql_literal(str(tmp))} (FORMAT parquet, COMPRESSION zstd)")
            os.replace(tmp, path)
            rel = str(path.relative_to(archive_dir))
            for run in manifest.get("runs", []):
                for item in run.get("files", []):
                    if item["path"] == rel:
                        item["sha256"] = file_sha256(path)
            total += len(changes)
            rewritten.append(rel)
    if rewritten:
        manifest.setdefault("erasures", []).append(
            {"at": dt.datetime.now(dt.UTC).isoformat(), "erasure": erasure_id,
             "records": total, "files": rewritten})
        save_manifest(archive_dir, manifest, signing_key)
    return total, rewritten


def _count(report: ForgetReport, plans: Iterable[tuple[RowErasure, tuple[Any, ...]]]) -> None:
    columns: Counter[str] = Counter(report.by_column)
    actions: Counter[str] = Counter(report.by_action)
    kinds: Counter[str] = Counter(report.by_resource_type)
    for erased, row in plans:
        columns.update(str(loc[0]) for loc in erased.locations)
        report.values += len(erased.locations)
        actions[row[_POS["action"]] or _NONE] += 1
        kinds[row[_POS["resource_type"]] or _NONE] += 1
    report.by_column = dict(sorted(columns.items()))
    report.by_action = dict(sorted(actions.items()))
    report.by_resource_type = dict(sorted(kinds.items()))


def forget(engine: Engine, user_id: str, *, archive_dir: str | Path | None = None,
           erased_by: str | None = None, trail: AuditTrail | None = None,
           signing_key: Ed25519PrivateKey | None = None, emails: Iterable[str] = (),
           matchers: SubjectMatchers | None = None) -> ForgetReport:
    """Erase every personal reference to ``user_id``; ``verify`` still passes afterwards.

    ``emails`` are added to the ones learned from the subject's own rows; ``matchers``
    (default :class:`SubjectMatchers`) say which JSON keys and resource types name a
    person. The erased rows (live and archived) and every erased location are listed in
    an erasure document stored in ``audit_erasures`` in the same transaction as the
    live rows' update, signed with ``signing_key`` (``verify --public-key`` then
    authenticates it; an unsigned erasure is reported as ``unauthenticated``). With
    ``trail``, an ``ERASE`` record (counts and the erasure's ID, never the subject's
    identifiers) is appended to the trail in ``sync`` mode first, and the document
    names it.
    """
    archive = Path(archive_dir) if archive_dir is not None else None
    subject = Subject(user_id, frozenset({*_emails(engine, user_id, archive), *emails}))
    matchers = SubjectMatchers() if matchers is None else matchers
    previous = latest_entries(all_erasures(engine))
    live = _live_plan(engine, subject, matchers, previous)
    archived = _archive_plan(archive, subject, matchers, previous) \
        if archive is not None and archive.is_dir() else []
    entries = [e.entry for e, _ in live] + [e.entry for _, plan in archived for e, _ in plan]
    report = ForgetReport(emails=len(subject.emails))
    _count(report, live)
    for _, plan in archived:
        _count(report, plan)
    erasure_id = uuid.uuid4().hex if entries else None
    record_id = None
    if trail is not None:
        written = trail.record(
            "ERASE", user_id=erased_by or "otel-audit", resource_type="audit_subject",
            resource_id=erasure_id, mode="sync",
            context={"erasure": erasure_id, "records_erased": len(live),
                     "archived_records_erased": sum(len(p) for _, p in archived),
                     "archive_files_rewritten": len(archived), "values_erased": report.values,
                     "values_by_column": report.by_column})
        record_id = written.id if written is not None else None
    erasure = None
    if erasure_id is not None:
        erasure = new_erasure(erasure_id, entries, erased_by=erased_by, record_id=record_id,
                              key=signing_key)
    report.live = _erase_live(engine, [e.changes for e, _ in live], erasure)
    report.erasure_id = erasure_id
    if archive is not None and archived:
        report.archived, report.files = _erase_archives(
            archive, [(p, [e.changes for e, _ in plan]) for p, plan in archived], erasure_id,
            signing_key)
    return report
