"""Retention: prune old records to Parquet archives, legal holds, and erasure (GDPR Art. 17).

``prune`` exports the records older than a date (except held ones) to day-partitioned
Parquet files with exactly the ``audit_trails`` columns and types, writes a manifest
(counts, first/last ``seq`` and hash per stream, SHA-256 of every file), checkpoints the
last archived record of each stream, and only then deletes the rows in batches. Chains
continue across the boundary: ``verify --archive DIR`` reads archives and live rows as
one trail, as ``AuditAnalytics`` does.

``forget`` replaces one subject's personal values by ``[erased]`` in live rows and
archives while keeping their salted digest (``pii`` column), so every hash still
verifies; see ``docs/integrity.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from .analytics.duck import attach_store, sql_literal
from .errors import ConfigError, IntegrityError, StoreError
from .integrity.archives import (  # verify_archive_files: part of this module's API
    file_sha256,
    load_manifest,
    save_manifest,
    verify_archive_files,
)
from .integrity.canonical import (
    CHAIN_ROW_COLUMNS,
    PERSONAL_FIELDS,
    personal_digest,
    personal_json_values,
    pii_info,
    rewrite_json,
    row_version,
)
from .integrity.checkpoints import write_checkpoint
from .integrity.erasures import ERASED, Erasure, erasure_entry, new_erasure, store_erasure
from .integrity.sources import chain_row_select
from .record import JSON_FIELDS
from .store.schema import audit_holds, audit_trails

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .trail import AuditTrail

__all__ = [
    "ERASED",
    "HOLD_KINDS",
    "ForgetReport",
    "Hold",
    "PruneReport",
    "active_holds",
    "add_hold",
    "forget",
    "prune",
    "release_hold",
    "verify_archive_files",
]

#: What a legal hold can name.
HOLD_KINDS = ("user", "resource", "team")
_DELETE_BATCH = 5000


# ---------------------------------------------------------------------- legal holds


@dataclass(frozen=True, slots=True)
class Hold:
    """A legal hold: records of a user, a team or a resource are kept from pruning."""

    id: int
    kind: str
    value: str
    resource_type: str | None
    reason: str | None
    created_by: str | None
    created_at: dt.datetime


def add_hold(engine: Engine, kind: str, value: str, *, resource_type: str | None = None,
             reason: str | None = None, created_by: str | None = None,
             trail: AuditTrail | None = None) -> Hold:
    """Place a hold; with ``trail``, the hold itself is recorded (sync) in the trail."""
    if kind not in HOLD_KINDS:
        raise ConfigError(f"hold kind must be one of {', '.join(HOLD_KINDS)}; got {kind!r}")
    now = dt.datetime.now(dt.UTC)
    try:
        with engine.begin() as conn:
            key = conn.execute(insert(audit_holds).values(
                kind=kind, value=value, resource_type=resource_type, reason=reason,
                created_by=created_by, created_at=now)).inserted_primary_key
            hold_id = key[0] if key is not None else 0
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot add the hold: {exc}") from exc
    hold = Hold(int(hold_id), kind, value, resource_type, reason, created_by, now)
    if trail is not None:
        trail.record("LEGAL_HOLD_ADD", user_id=created_by or "otel-audit",
                     resource_type="audit_hold", resource_id=str(hold.id), mode="sync",
                     new_values={"kind": kind, "value": value, "resource_type": resource_type,
                                 "reason": reason})
    return hold


def release_hold(engine: Engine, hold_id: int, *, released_by: str | None = None,
                 trail: AuditTrail | None = None) -> bool:
    """Release an active hold (kept in the table, with its release time)."""
    try:
        with engine.begin() as conn:
            done = conn.execute(update(audit_holds).where(
                audit_holds.c.id == hold_id, audit_holds.c.released_at.is_(None)).values(
                released_at=dt.datetime.now(dt.UTC))).rowcount
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot release the hold: {exc}") from exc
    if done and trail is not None:
        trail.record("LEGAL_HOLD_RELEASE", user_id=released_by or "otel-audit",
                     resource_type="audit_hold", resource_id=str(hold_id), mode="sync")
    return bool(done)


def active_holds(engine: Engine) -> list[Hold]:
    """Holds not released."""
    h = audit_holds.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(h.id, h.kind, h.value, h.resource_type, h.reason,
                                       h.created_by, h.created_at)
                                .where(h.released_at.is_(None)).order_by(h.id)).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the holds: {exc}") from exc
    return [Hold(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]


def _held_sql(holds: Iterable[Hold]) -> str:
    """A DuckDB predicate true for records under any of ``holds``."""
    terms = []
    for hold in holds:
        value = sql_literal(hold.value)
        if hold.kind == "user":
            terms.append(f"user_id = {value}")
        elif hold.kind == "team":
            terms.append(f"team_id = {value}")
        elif hold.resource_type is not None:
            terms.append(f"(resource_id = {value} AND resource_type = "
                         f"{sql_literal(hold.resource_type)})")
        else:
            terms.append(f"resource_id = {value}")
    return " OR ".join(terms) if terms else "FALSE"


# ---------------------------------------------------------------------- prune


@dataclass(slots=True)
class PruneReport:
    """What one prune did."""

    archived: int = 0
    deleted: int = 0
    held: int = 0
    files: list[str] = field(default_factory=list)
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)


def _typed_columns() -> str:
    """Every ``audit_trails`` column with the archive's type (the same on every store)."""
    out = []
    for column in audit_trails.columns:
        name = f'"{column.name}"'
        kind = type(column.type).__name__.upper()
        if column.name == "timestamp":
            # the session time zone is UTC, so SQLite's naive UTC text lands unchanged
            cast = "TIMESTAMPTZ"
        elif column.name in JSON_FIELDS:
            cast = "JSON"
        else:
            cast = {"BOOLEAN": "BOOLEAN", "BIGINTEGER": "BIGINT",
                    "INTEGER": "INTEGER"}.get(kind, "VARCHAR")
        out.append(f"CAST({name} AS {cast}) AS {name}")
    return ", ".join(out)


def _connect(engine: Engine) -> duckdb.DuckDBPyConnection:
    if engine.dialect.name == "sqlite":
        # DuckDB reads the file with its own SQLite library in this process: two
        # libraries sharing one WAL index (-shm) crashed the process (SIGBUS) when the
        # WAL held recent writes. Fold the WAL into the database and close this engine's
        # connections first (the deletions that follow open new ones).
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot checkpoint the SQLite WAL before archiving: {exc}") from exc
        engine.dispose()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    attach_store(con, engine.url)
    return con


def prune(
    engine: Engine,
    before: dt.datetime,
    archive_dir: str | Path,
    *,
    signing_key: Ed25519PrivateKey | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> PruneReport:
    """Archive records older than ``before`` (except held ones), then delete them."""
    if before.tzinfo is None:
        before = before.replace(tzinfo=dt.UTC)
    out_dir = Path(archive_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PruneReport()
    held = _held_sql(active_holds(engine))
    con = _connect(engine)
    try:
        cols = _typed_columns()
        # one scan of the store: every old record, flagged when a hold covers it
        con.execute(
            f"CREATE TEMP TABLE old AS SELECT *, coalesce({held}, FALSE) AS _held FROM "
            f"(SELECT {cols} FROM live.audit_trails) WHERE timestamp < ?", [before])
        held_row = con.execute("SELECT count(*) FROM old WHERE _held").fetchone()
        report.held = int(held_row[0]) if held_row else 0
        con.execute("CREATE TEMP TABLE sel AS SELECT * EXCLUDE (_held) FROM old WHERE NOT _held")
        con.execute("DROP TABLE old")
        days = [r[0] for r in con.execute(
            "SELECT DISTINCT CAST(timestamp AS DATE) AS d FROM sel ORDER BY d").fetchall()]
        run = uuid.uuid4().hex[:12]
        files = []
        for day in days:
            target = out_dir / f"day={day.isoformat()}" / f"part-{run}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            con.execute(
                f"COPY (SELECT * FROM sel WHERE CAST(timestamp AS DATE) = ? "
                f"ORDER BY stream, seq) TO {sql_literal(str(target))} "
                "(FORMAT parquet, COMPRESSION zstd)", [day])
            rows = con.execute(f"SELECT count(*) FROM read_parquet({sql_literal(str(target))})"
                               ).fetchone()
            files.append({"path": str(target.relative_to(out_dir)), "day": day.isoformat(),
                          "rows": int(rows[0]) if rows else 0, "sha256": file_sha256(target)})
            if progress is not None:
                progress("archived", int(rows[0]) if rows else 0)
        for stream, count, first_seq, first_hash, last_seq, last_hash in con.execute(
                "SELECT stream, count(*), min(seq), arg_min(hash, seq), max(seq), "
                "arg_max(hash, seq) FROM sel WHERE stream IS NOT NULL GROUP BY stream "
                "ORDER BY stream").fetchall():
            report.streams[stream] = {"count": int(count), "first_seq": int(first_seq),
                                      "first_hash": first_hash, "last_seq": int(last_seq),
                                      "last_hash": last_hash}
        ids = [r[0] for r in con.execute("SELECT id FROM sel").fetchall()]
    except duckdb.Error as exc:
        raise StoreError(f"cannot export the records to archive: {exc}") from exc
    finally:
        con.close()
    report.archived = len(ids)
    report.files = [f["path"] for f in files]
    if not ids:
        return report
    manifest = load_manifest(out_dir)
    manifest["runs"].append({"run": run, "pruned_at": dt.datetime.now(dt.UTC).isoformat(),
                             "before": before.isoformat(), "records": len(ids),
                             "held": report.held, "files": files, "streams": report.streams})
    save_manifest(out_dir, manifest, signing_key)
    for stream, info in report.streams.items():
        write_checkpoint(engine, stream, info["last_seq"], info["last_hash"], signing_key)
    report.deleted = _delete(engine, ids, progress)
    return report


def _delete(engine: Engine, ids: Sequence[str],
            progress: Callable[[str, int], None] | None) -> int:
    deleted = 0
    try:
        for start in range(0, len(ids), _DELETE_BATCH):
            chunk = ids[start:start + _DELETE_BATCH]
            with engine.begin() as conn:
                deleted += conn.execute(
                    audit_trails.delete().where(audit_trails.c.id.in_(chunk))).rowcount
            if progress is not None:
                progress("deleted", len(chunk))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot delete archived records ({deleted} done): {exc}") from exc
    return deleted


# ---------------------------------------------------------------------- forget


@dataclass(slots=True)
class ForgetReport:
    """What one erasure did."""

    live: int = 0
    archived: int = 0
    files: list[str] = field(default_factory=list)
    erasure_id: str | None = None


_POS = {name: i for i, name in enumerate(CHAIN_ROW_COLUMNS)}


def _erase_json(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: (ERASED if k in keys else _erase_json(v, keys)) for k, v in value.items()}
    if isinstance(value, list):
        return [_erase_json(v, keys) for v in value]
    return value


def _erasure(row: Sequence[Any]) -> dict[str, Any] | None:
    """New values of an erased chain row (``None``: already erased)."""
    pii_text = row[_POS["pii"]]
    keys: list[str] = []
    if pii_text is not None:
        parsed = pii_info(pii_text)
        if parsed is None:
            raise IntegrityError(f"record {row[_POS['id']]} has a malformed pii value; "
                                 "run `otel-audit verify`")
        if parsed[1] is not None:
            return None  # erased already
        keys = parsed[0] or []
    texts = [row[_POS[name]] for name in JSON_FIELDS]
    salt = row[_POS["pii_salt"]]
    version = row_version(row)  # the rules the row was sealed under
    digest = personal_digest("" if salt is None else salt,
                             [row[_POS[name]] for name in PERSONAL_FIELDS],
                             personal_json_values(texts, keys, version=version) if keys
                             else [], version=version)
    erased = {"k": keys, "d": digest} if keys else {"d": digest}
    changes: dict[str, Any] = {"id": row[_POS["id"]], "pii_salt": None,
                               "pii": json.dumps(erased)}
    for name in PERSONAL_FIELDS:
        changes[name] = ERASED if row[_POS[name]] is not None else None
    frozen = frozenset(keys)
    for name, text_value in zip(JSON_FIELDS, texts, strict=True):
        if keys and text_value is not None:
            changes[name] = rewrite_json(text_value, lambda v: _erase_json(v, frozen),
                                         version=version)
        else:
            changes[name] = text_value
    return changes


def _live_changes(engine: Engine, user_id: str) -> list[tuple[dict[str, Any], tuple[Any, ...]]]:
    """``(changes, chain row)`` of each of the subject's live records not yet erased."""
    dialect = engine.dialect.name
    mark = "?" if dialect == "sqlite" else "%s"
    select_sql = (f"SELECT {chain_row_select(dialect)} FROM audit_trails "
                  f"WHERE user_id = {mark} AND stream IS NOT NULL")
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(select_sql, (user_id,)).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the subject's records: {exc}") from exc
    return [(c, tuple(r)) for c, r in ((_erasure(tuple(r)), r) for r in rows) if c is not None]


def _erase_live(engine: Engine, changes: list[dict[str, Any]], erasure: Erasure | None) -> int:
    """Apply ``changes`` and store ``erasure`` in one transaction."""
    dialect = engine.dialect.name
    json_cast = "CAST({} AS JSONB)" if dialect == "postgresql" else "{}"
    sets = ", ".join(
        f"{name} = " + (json_cast.format(f":{name}") if name in JSON_FIELDS else f":{name}")
        for name in (*PERSONAL_FIELDS, *JSON_FIELDS, "pii_salt", "pii"))
    try:
        with engine.begin() as conn:
            if changes:
                conn.execute(text(f"UPDATE audit_trails SET {sets} WHERE id = :id"), changes)
            if erasure is not None:
                store_erasure(conn, erasure)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot erase the subject's records: {exc}") from exc
    return len(changes)


def _entry(changes: dict[str, Any], row: Sequence[Any]) -> dict[str, Any]:
    info = pii_info(changes["pii"])
    keys = (info[0] or []) if info else []
    return erasure_entry(changes, row[_POS["stream"]], row[_POS["seq"]], keys)


def _archive_changes(archive_dir: Path, user_id: str,
                     ) -> list[tuple[Path, list[tuple[dict[str, Any], tuple[Any, ...]]]]]:
    """Per archive file, ``(changes, chain row)`` of the subject's records not yet erased."""
    out = []
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    try:
        for path in sorted(archive_dir.rglob("*.parquet")):
            source = f"read_parquet({sql_literal(str(path))})"
            rows = con.execute(f"SELECT {chain_row_select('duckdb')} FROM {source} "
                               "WHERE user_id = ?", [user_id]).fetchall()
            changes = [(c, tuple(r)) for c, r in ((_erasure(r), r) for r in rows)
                       if c is not None]
            if changes:
                out.append((path, changes))
    except duckdb.Error as exc:
        raise StoreError(f"cannot read the subject's archived records: {exc}") from exc
    finally:
        con.close()
    return out


def _erase_archives(archive_dir: Path, files: list[tuple[Path, list[dict[str, Any]]]],
                    erasure_id: str | None,
                    signing_key: Ed25519PrivateKey | None) -> tuple[int, list[str]]:
    manifest = load_manifest(archive_dir)
    total, rewritten = 0, []
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    try:
        for path, changes in files:
            source = f"read_parquet({sql_literal(str(path))})"
            names = ["id", *PERSONAL_FIELDS, *JSON_FIELDS, "pii_salt", "pii"]
            con.execute("CREATE OR REPLACE TEMP TABLE upd (" +
                        ", ".join(f'"{n}" VARCHAR' for n in names) + ")")
            con.executemany(f"INSERT INTO upd VALUES ({', '.join('?' * len(names))})",
                            [[c[n] for n in names] for c in changes])
            replace = ", ".join(
                f"CASE WHEN u.id IS NULL THEN a.\"{n}\" ELSE "
                f"CAST(u.\"{n}\" AS {'JSON' if n in JSON_FIELDS else 'VARCHAR'}) END AS \"{n}\""
                for n in names[1:])
            tmp = path.with_name(path.name + ".tmp")
            con.execute(f"COPY (SELECT a.* REPLACE ({replace}) FROM {source} a "
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
    except duckdb.Error as exc:
        raise StoreError(f"cannot erase the subject from the archives: {exc}") from exc
    finally:
        con.close()
    if rewritten:
        manifest.setdefault("erasures", []).append(
            {"at": dt.datetime.now(dt.UTC).isoformat(), "erasure": erasure_id,
             "records": total, "files": rewritten})
        save_manifest(archive_dir, manifest, signing_key)
    return total, rewritten


def forget(engine: Engine, user_id: str, *, archive_dir: str | Path | None = None,
           erased_by: str | None = None, trail: AuditTrail | None = None,
           signing_key: Ed25519PrivateKey | None = None) -> ForgetReport:
    """Erase ``user_id``'s personal values everywhere; ``verify`` still passes afterwards.

    The erased rows (live and archived) are listed in an erasure document stored in
    ``audit_erasures`` in the same transaction as the live rows' update, signed with
    ``signing_key`` (``verify --public-key`` then authenticates it; an unsigned erasure
    is reported as ``unauthenticated``). With ``trail``, an ``ERASE`` record (counts and
    the erasure's ID, never the subject's ID) is appended to the trail in ``sync`` mode
    first, and the document names it.
    """
    live = _live_changes(engine, user_id)
    archive = Path(archive_dir) if archive_dir is not None else None
    archived = _archive_changes(archive, user_id) if archive is not None and \
        archive.is_dir() else []
    entries = [_entry(c, r) for c, r in live]
    entries += [_entry(c, r) for _, items in archived for c, r in items]
    erasure_id = uuid.uuid4().hex if entries else None
    record_id = None
    if trail is not None:
        written = trail.record(
            "ERASE", user_id=erased_by or "otel-audit", resource_type="audit_subject",
            resource_id=erasure_id, mode="sync",
            context={"erasure": erasure_id, "records_erased": len(live),
                     "archived_records_erased": sum(len(i) for _, i in archived),
                     "archive_files_rewritten": len(archived)})
        record_id = written.id if written is not None else None
    erasure = None
    if erasure_id is not None:
        erasure = new_erasure(erasure_id, entries, erased_by=erased_by, record_id=record_id,
                              key=signing_key)
    report = ForgetReport(live=_erase_live(engine, [c for c, _ in live], erasure),
                          erasure_id=erasure_id)
    if archive is not None and archived:
        report.archived, report.files = _erase_archives(
            archive, [(p, [c for c, _ in items]) for p, items in archived], erasure_id,
            signing_key)
    return report
