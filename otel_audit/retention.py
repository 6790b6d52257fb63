"""Retention: prune old records to Parquet archives, legal holds, and erasure (GDPR Art. 17).

``prune`` exports the records older than a date (except held ones) to day-partitioned
Parquet files with exactly the ``audit_trails`` columns and types, writes a manifest
(counts, first/last ``seq`` and hash per stream, SHA-256 of every file), checkpoints the
last archived record of each stream, and only then deletes the rows in batches. Chains
continue across the boundary: ``verify --archive DIR`` reads archives and live rows as
one trail, as ``AuditAnalytics`` does.

``forget`` (:mod:`otel_audit.forgetting`) erases every personal reference to one subject
in live rows and archives while every hash still verifies; see ``docs/integrity.md``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from .analytics.duck import attach_store, sql_literal
from .errors import ConfigError, StoreError
from .forgetting import ERASED, ForgetReport, forget
from .forgetting import row_erasure as _erasure  # noqa: F401 - the erasure tests use it
from .integrity.archives import (  # verify_archive_files: part of this module's API
    file_sha256,
    load_manifest,
    save_manifest,
    verify_archive_files,
)
from .integrity.checkpoints import write_checkpoint
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


def _connect(url: str) -> duckdb.DuckDBPyConnection:
    from sqlalchemy.engine import make_url

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    attach_store(con, make_url(url))
    return con


def export_old_records(url: str, before: dt.datetime, out_dir: str, held: str,
                       run: str) -> dict[str, Any]:
    """Prune's export: the records older than ``before`` not matching ``held`` (a DuckDB
    predicate), to ``out_dir/day=.../part-{run}.parquet``, read through DuckDB.

    Returns ``held`` (count), ``files`` (path, day, rows, sha256), ``streams`` (the
    per-stream summary) and ``ids``, all JSON values. On a SQLite store this runs in a
    child process (:func:`otel_audit.analytics.isolated.call_in_child`): DuckDB's bundled
    SQLite library never opens the file in a process that has it open through ``sqlite3``.
    """
    target_dir = Path(out_dir)
    con = _connect(url)
    try:
        cols = _typed_columns()
        # one scan of the store: every old record, flagged when a hold covers it
        con.execute(
            f"CREATE TEMP TABLE old AS SELECT *, coalesce({held}, FALSE) AS _held FROM "
            f"(SELECT {cols} FROM live.audit_trails) WHERE timestamp < ?", [before])
        held_row = con.execute("SELECT count(*) FROM old WHERE _held").fetchone()
        held_count = int(held_row[0]) if held_row else 0
        con.execute("CREATE TEMP TABLE sel AS SELECT * EXCLUDE (_held) FROM old WHERE NOT _held")
        con.execute("DROP TABLE old")
        days = [r[0] for r in con.execute(
            "SELECT DISTINCT CAST(timestamp AS DATE) AS d FROM sel ORDER BY d").fetchall()]
        files = []
        for day in days:
            target = target_dir / f"day={day.isoformat()}" / f"part-{run}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            con.execute(
                f"COPY (SELECT * FROM sel WHERE CAST(timestamp AS DATE) = ? "
                f"ORDER BY stream, seq) TO {sql_literal(str(target))} "
                "(FORMAT parquet, COMPRESSION zstd)", [day])
            rows = con.execute(f"SELECT count(*) FROM read_parquet({sql_literal(str(target))})"
                               ).fetchone()
            files.append({"path": str(target.relative_to(target_dir)), "day": day.isoformat(),
                          "rows": int(rows[0]) if rows else 0, "sha256": file_sha256(target)})
        streams = {}
        for stream, count, first_seq, first_hash, last_seq, last_hash in con.execute(
                "SELECT stream, count(*), min(seq), arg_min(hash, seq), max(seq), "
                "arg_max(hash, seq) FROM sel WHERE stream IS NOT NULL GROUP BY stream "
                "ORDER BY stream").fetchall():
            streams[stream] = {"count": int(count), "first_seq": int(first_seq),
                               "first_hash": first_hash, "last_seq": int(last_seq),
                               "last_hash": last_hash}
        ids = [r[0] for r in con.execute("SELECT id FROM sel").fetchall()]
    except duckdb.Error as exc:
        raise StoreError(f"cannot export the records to archive: {exc}") from exc
    finally:
        con.close()
    return {"held": held_count, "files": files, "streams": streams, "ids": ids}


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
    run = uuid.uuid4().hex[:12]
    url = engine.url.render_as_string(hide_password=False)
    args = (url, before, str(out_dir.resolve()), held, run)
    if engine.dialect.name == "sqlite":
        from .analytics.isolated import call_in_child

        exported = call_in_child("prune_export", *args)
    else:
        exported = export_old_records(*args)
    report.held = int(exported["held"])
    files: list[dict[str, Any]] = exported["files"]
    report.streams = exported["streams"]
    ids: list[str] = exported["ids"]
    if progress is not None:
        for found in files:
            progress("archived", int(found["rows"]))
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
