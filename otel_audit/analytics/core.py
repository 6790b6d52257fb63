"""``AuditAnalytics``: SQL over the live trail (and its Parquet archives) with DuckDB.

DuckDB runs in-process and attaches the store read-only (SQLite or PostgreSQL, live:
no copy step). The temp view ``audit_trails`` gives every store the same typed columns
(TIMESTAMPTZ, JSON, BOOLEAN); the session time zone is UTC.

Analytics is read-only and touches no file but the store and its archives (see
:mod:`._guard`): once the store is attached, DuckDB is locked (no external access
beyond the archive directory, no extension loading, configuration locked), and every
query is checked by DuckDB's own parser (one ``SELECT``, or ``EXPLAIN [ANALYZE]`` of
one, calling only allow-listed table functions). The read-only attachment is a further
lock; on PostgreSQL, a role that may only SELECT is the last one.

On a SQLite store the locked connection runs in a child process (see :mod:`.isolated`):
DuckDB's scanner carries its own SQLite library, which must never open the file in a
process that also has it open through ``sqlite3``. There ``con`` is a local connection,
locked the same way, with nothing attached: it holds the rows that come back as Arrow.
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import duckdb

from .._internal import log_internal_error
from ..config import normalise_database_url, resolve_config
from ..errors import AuditError, QueryError, QueryRefusedError
from ._guard import checked_query, lock_down
from .duck import (
    attach_store,
    check_sqlite_store,
    create_view,
    export_relation,
    snapshot,
    sql_literal,
)
from .isolated import ChildSpec, IsolatedDuck, arrow_relation
from .relation import AuditRelation

if TYPE_CHECKING:
    from ..trail import AuditTrail

__all__ = ["AnalyticsScope", "AuditAnalytics"]


@dataclass(frozen=True, slots=True)
class AnalyticsScope:
    """What a scoped :class:`AuditAnalytics` may see: ``teams`` (``"*"``: every team) and
    whether ``restricted`` records are included.

    The scope is a fixed predicate of the view ``audit_trails`` itself, and a scoped
    instance's queries may read nothing but that view (see :func:`._guard.checked_query`).
    """

    teams: tuple[str, ...]
    restricted: bool = False

    def predicate(self) -> str:
        """The view's WHERE clause (values quoted as literals: a view binds no parameters)."""
        clauses = []
        if "*" not in self.teams:
            if not self.teams:
                return "false"
            teams = ", ".join(sql_literal(team) for team in sorted(set(self.teams)))
            clauses.append(f"team_id IN ({teams})")
        if not self.restricted:
            clauses.append("(data_classification IS NULL OR data_classification <> 'restricted')")
        return " AND ".join(clauses) or "true"


class AuditAnalytics:
    """DuckDB over one audit trail, read-only.

    ``AuditAnalytics(url_or_trail=None, *, archive_dir=None, audit_reads=False,
    reader=None, snapshot=False, scope=None)``: ``url_or_trail`` is a SQLAlchemy URL or
    an :class:`AuditTrail`
    (default: ``OTEL_AUDIT_DATABASE_URL``). ``archive_dir`` (default
    ``OTEL_AUDIT_ARCHIVE_DIR``) adds the retention's Parquet archives to the view.
    With ``audit_reads=True`` every query and report is itself recorded in the trail
    as ``audit.read`` by ``reader`` (default: the operating-system user), as PCI DSS
    10.2.1.3 asks for access to audit logs.

    By default every query reads the store live. ``snapshot=True`` loads the view once
    into DuckDB's own columnar memory (``refresh()`` reloads it): the scanners read a
    SQLite or PostgreSQL table row by row, so for many queries over millions of records
    one load plus columnar queries is much faster than repeated live scans.

    ``scope`` (an :class:`AnalyticsScope`) limits the view to some teams and hides
    restricted records; its queries may then name no other table (not the attached
    store, not a Parquet file), so no query or report parameter reaches unscoped rows.
    """

    def __init__(
        self,
        url_or_trail: str | AuditTrail | None = None,
        *,
        archive_dir: str | os.PathLike[str] | None = None,
        audit_reads: bool = False,
        reader: str | None = None,
        snapshot: bool = False,
        scope: AnalyticsScope | None = None,
    ) -> None:
        from ..trail import AuditTrail

        self._trail: AuditTrail | None = None
        self._owns_trail = False
        if isinstance(url_or_trail, AuditTrail):
            self._trail = url_or_trail
            config = url_or_trail.config
            url_or_trail.flush()  # a caller's own writes are visible to its analysis
        else:
            config = resolve_config({"url": url_or_trail})
        self.url = normalise_database_url(config.url)
        archive = archive_dir if archive_dir is not None else config.archive_dir
        self.archive_dir: Path | None = Path(archive) if archive else None
        self.audit_reads = audit_reads
        self.reader = reader or _os_user()
        self.scope = scope
        # replacement scans off from the start: a name DuckDB does not know must never
        # resolve to a variable of the caller's (or this library's) Python frames
        self.con = duckdb.connect(":memory:", config={"python_enable_replacements": False})
        # spilled pages hold audit data: a private directory, removed by close() (or when
        # this object is collected without one)
        self._spill_dir = Path(tempfile.mkdtemp(prefix="otel-audit-analytics-"))
        self._remove_spill_dir = weakref.finalize(self, shutil.rmtree, self._spill_dir, True)
        self._isolated: IsolatedDuck | None = None
        try:
            # UTC everywhere: SQLite stores naive UTC text, and reports bucket by UTC day/hour
            self.con.execute("SET TimeZone = 'UTC'")
            store = self.url.render_as_string(hide_password=True)
            archive_glob = self._archive_glob()
            self.snapshot = snapshot
            readable = [self.archive_dir] if archive_glob and self.archive_dir else []
            where = scope.predicate() if scope is not None else None
            if self.url.get_backend_name() == "sqlite":
                # DuckDB's SQLite is a second SQLite library: it reads the file in a child
                # process (see .isolated), and this connection attaches nothing; it only
                # holds the rows that come back
                check_sqlite_store(self.url, store)
                self.backend = "sqlite"
                lock_down(self.con, readable=readable, spill_dir=self._spill_dir)
                self._isolated = IsolatedDuck(ChildSpec(
                    url=self.url.render_as_string(hide_password=False), store=store,
                    archive_glob=archive_glob, where=where, snapshot=snapshot,
                    readable=tuple(str(p) for p in readable),
                    spill_dir=str(self._spill_dir), scoped=scope is not None))
                # the child ends with this object even when it is never closed
                self._end_child = weakref.finalize(self, self._isolated.close)
            else:
                self.backend = attach_store(self.con, self.url)
                view = "audit_trails_source" if snapshot else "audit_trails"
                # with snapshot=True both the source view and its loaded table are scoped
                create_view(self.con, "live", archive_glob, name=view, store=store,
                            where=where)
                lock_down(self.con, readable=readable, spill_dir=self._spill_dir)
            # one DuckDB connection is not safe to share between threads: each thread
            # queries (and has its queries checked) on its own cursor of the locked database
            self._local = threading.local()
            self._cursors: list[duckdb.DuckDBPyConnection] = []
            self._cursors_lock = threading.Lock()
            if self._isolated is None:  # the child loads its snapshot when it starts
                self.refresh()
        except BaseException:
            self.con.close()
            self._remove_spill_dir()
            raise

    def __repr__(self) -> str:
        url = self.url.render_as_string(hide_password=True)
        scope = f", scope={self.scope!r}" if self.scope is not None else ""
        return f"AuditAnalytics(url={url!r}, archive_dir={self.archive_dir!r}{scope})"

    def _archive_glob(self) -> str | None:
        if self.archive_dir is None or not self.archive_dir.is_dir():
            return None
        if next(self.archive_dir.rglob("*.parquet"), None) is None:
            return None
        return str(self.archive_dir.resolve() / "**" / "*.parquet")

    # ---------------------------------------------------------------- querying

    def refresh(self) -> None:
        """Reload the snapshot from the store (``snapshot=True`` only; live reads need none)."""
        if not self.snapshot:
            return
        if self._isolated is not None:
            self._isolated.refresh()
            return
        try:
            snapshot(self.con, "audit_trails_source")
        except duckdb.Error as exc:
            raise QueryError(f"cannot load the snapshot: {exc}") from exc

    def sql(self, query: str, params: Mapping[str, Any] | list[Any] | None = None,
            *, report: str | None = None) -> AuditRelation:
        """Run one read-only query over the view ``audit_trails``; parameters are bound.

        Returns an :class:`AuditRelation`: DuckDB's relation (``.df()``, ``.pl()``, ``.arrow()``,
        ``.fetchall()``). Raises :class:`QueryRefusedError` for anything but one
        ``SELECT`` (or ``EXPLAIN [ANALYZE]`` of one) reading the trail, its archives or
        DuckDB's generators, and :class:`QueryError` for other DuckDB errors.
        """
        cursor = self._cursor()
        statement = checked_query(cursor, query, scoped=self.scope is not None)
        self._audit_read(query, report, params)
        if self._isolated is not None:
            # the child checks the query again on its own locked connection and runs it;
            # the rows come back as Arrow, into this thread's cursor (nothing attached)
            columns, types, table = self._isolated.query(query, _bindable(params))
            try:
                return AuditRelation(arrow_relation(cursor, columns, types, table))
            except duckdb.Error as exc:
                raise QueryError(str(exc)) from exc
        try:
            return AuditRelation(cursor.sql(statement, params=_bindable(params)))
        except duckdb.PermissionException as exc:  # the locked connection said no
            raise QueryRefusedError(
                f"analytics reads only the trail and its archive directory: {exc}") from exc
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from exc

    def report(self, name: str, **params: Any) -> AuditRelation:
        """Run the named compliance report (see :func:`otel_audit.analytics.list_reports`)."""
        from .catalog import get_report

        found = get_report(name)
        return self.sql(found.sql, found.bind(params), report=name)

    def copy_to(self, query: str, params: Mapping[str, Any] | None, path: str | Path,
                fmt: str) -> None:
        """Write the result of a read-only ``query`` to ``path`` (``parquet``, ``csv``,
        ``jsonl``) with DuckDB's own ``COPY`` (no pyarrow needed).

        The locked connection writes no file: rows stream to a separate DuckDB
        connection that writes ``path`` and nothing else.
        """
        options = {"parquet": "FORMAT parquet, COMPRESSION zstd",
                   "csv": "FORMAT csv, HEADER true",
                   "jsonl": "FORMAT json"}
        if fmt not in options:
            raise QueryError(f"unknown export format {fmt!r}; expected {', '.join(options)}")
        if self._isolated is not None:  # the child writes the file
            checked_query(self._cursor(), query, scoped=self.scope is not None)
            self._audit_read(query, "export", params)
            self._isolated.copy(query, _bindable(params), str(Path(path).absolute()),
                                options[fmt])
            return
        relation = self.sql(query, params, report="export")  # validates (and audits) it
        try:
            export_relation(relation.relation, str(path), options[fmt])
        except duckdb.Error as exc:
            raise QueryError(f"export failed: {exc}") from exc

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor (a connection to the same locked, attached database)."""
        cursor: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self.con.cursor()
            with self._cursors_lock:
                self._cursors.append(cursor)
            self._local.cursor = cursor
        return cursor

    # ------------------------------------------------------------- audited reads

    def _audit_read(self, query: str, report: str | None,
                    params: Mapping[str, Any] | list[Any] | None) -> None:
        if not self.audit_reads:
            return
        try:
            trail = self._reads_trail()
            context: dict[str, Any] = {"query": query[:4000]}
            if report is not None:
                context["report"] = report
            if params:
                context["params"] = dict(params) if isinstance(params, Mapping) else list(params)
            trail.record("audit.read", user_id=self.reader, resource_type="audit_trail",
                         resource_id=report or "query", context=context)
        except AuditError as exc:  # a failing audit of a read never blocks the read
            log_internal_error("analytics.audit_read", 40, "could not audit a trail read: %s",
                               exc)

    def _reads_trail(self) -> AuditTrail:
        from ..trail import AuditTrail

        if self._trail is None:
            self._trail = AuditTrail(self.url.render_as_string(hide_password=False),
                                     service_name="otel-audit-analytics")
            self._owns_trail = True
        return self._trail

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close DuckDB (and flush the trail used for audited reads, if this opened it)."""
        if self._owns_trail and self._trail is not None:
            self._trail.shutdown()
            self._trail = None
        if self._isolated is not None:
            self._end_child()
        with self._cursors_lock:
            for cursor in self._cursors:
                cursor.close()
            self._cursors.clear()
        self.con.close()
        self._remove_spill_dir()

    def __enter__(self) -> AuditAnalytics:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _bindable(params: Mapping[str, Any] | list[Any] | None) -> dict[str, Any] | list[Any] | None:
    if params is None:
        return None
    return dict(params) if isinstance(params, Mapping) else list(params)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
