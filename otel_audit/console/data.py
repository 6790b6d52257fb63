"""The console's reads (SQLAlchemy Core, read-only transactions) and its only writes.

Search, record, review-queue and related-record pages read the store directly through
SQLAlchemy Core: the store's indexes answer a first page in milliseconds, where DuckDB's
SQLite scanner pushes no filter down and would scan millions of rows. With archives,
they continue into them through the viewer's analytics (see ``_page``). Reports go
through :class:`~otel_audit.analytics.AuditAnalytics` (locked down, one ``SELECT``).
The connection is read-only (``PRAGMA query_only`` on SQLite, ``READ ONLY``
transactions on PostgreSQL); the console writes only ``audit.read``, ``audit.review``
and ``audit.export`` records, through an :class:`~otel_audit.trail.AuditTrail`.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Select, create_engine, event, select
from sqlalchemy.exc import SQLAlchemyError

from ..config import normalise_database_url
from ..errors import AuditError, StoreError
from ..record import AuditRecord
from ..store.reader import row_to_record
from ..store.schema import audit_trails
from .archive import archived_before, has_archives, read_archived, read_rows
from .query import (
    CONSOLE_ACTIONS,
    Cursor,
    Filters,
    Viewer,
    record_query,
    review_queue_query,
    reviewed_ids_query,
    search_query,
)
from .views import participants

if TYPE_CHECKING:
    from ..analytics import AuditAnalytics
    from ..integrity.sources import StoreSource
    from ..trail import AuditTrail

__all__ = ["ConsoleData", "Review", "ReviewError", "utcnow"]

#: A keyset query of a page: ``(after, limit) -> SELECT``.
_Build = Callable[[Cursor | None, int], Select[Any]]

#: How many team-scoped analytics (one DuckDB connection each) the console keeps open;
#: on SQLite each is a child process (about 80 MB of its own), so fewer are kept.
_SCOPED_KEPT = 16
_SCOPED_KEPT_SQLITE = 4

#: The service name of the console's own records.
CONSOLE_SERVICE = "otel-audit-console"


def utcnow() -> dt.datetime:
    """The current time, UTC."""
    return dt.datetime.now(dt.UTC)


class ReviewError(AuditError):
    """A review the console refuses (own record, already reviewed, no review required)."""


@dataclass(frozen=True, slots=True)
class Review:
    """One review of a record: who, when, with which note, as which record."""

    record_id: str
    reviewer: str
    timestamp: dt.datetime
    note: str
    review_id: str


def _read_only_engine(url: str) -> Engine:
    parsed = normalise_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _query_only(dbapi_conn: Any, _record: Any) -> None:
            # this connection can never write, whatever statement reaches it
            dbapi_conn.execute("PRAGMA query_only = ON")

        return engine
    return create_engine(parsed, pool_pre_ping=True,
                         execution_options={"postgresql_readonly": True})


class ConsoleData:
    """Everything the console reads and writes, for one store."""

    def __init__(self, url: str, *, trail: AuditTrail | None = None,
                 archive_dir: str | None = None, hmac_key: str | None = None) -> None:
        self.url = url
        self.engine = _read_only_engine(url)
        self.dialect = self.engine.dialect.name
        self.archive_dir = archive_dir
        self.hmac_key = hmac_key
        self._trail = trail
        self._owns_trail = trail is None
        self._lock = threading.Lock()
        self._analytics: AuditAnalytics | None = None
        # one scoped analytics per (teams) of the auditors: each holds a DuckDB connection,
        # so only the most recently used few are kept
        self._scoped: OrderedDict[tuple[str, ...], AuditAnalytics] = OrderedDict()
        self._chain_source: StoreSource | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def trail(self) -> AuditTrail:
        """The trail the console's own records go to (opened on first use)."""
        with self._lock:
            if self._trail is None:
                from ..trail import AuditTrail

                # async on every store: DuckDB's bundled SQLite never opens the file in
                # this process (AuditAnalytics reads SQLite in a child process)
                self._trail = AuditTrail(self.url, service_name=CONSOLE_SERVICE, mode="async")
            return self._trail

    def analytics(self, viewer: Viewer | None = None) -> AuditAnalytics:
        """The read-only analytics over the store (reports) that ``viewer`` may use.

        Admins (and ``None``: the console itself) get the whole trail; anyone else an
        analytics whose view holds only their teams' non-restricted records and whose
        queries can name nothing else (see ``AnalyticsScope``).
        """
        from ..analytics import AnalyticsScope, AuditAnalytics

        with self._lock:
            if viewer is None or viewer.is_admin:
                if self._analytics is None:
                    self._analytics = AuditAnalytics(self.url, archive_dir=self.archive_dir)
                return self._analytics
            teams = ("*",) if "*" in viewer.teams else tuple(sorted(set(viewer.teams)))
            found = self._scoped.get(teams)
            if found is None:
                found = AuditAnalytics(self.url, archive_dir=self.archive_dir,
                                       scope=AnalyticsScope(teams=teams))
                self._scoped[teams] = found
                kept = _SCOPED_KEPT_SQLITE if self.dialect == "sqlite" else _SCOPED_KEPT
                while len(self._scoped) > kept:
                    # not closed here: a report of another request may still be running
                    # on it; DuckDB (or its child process) closes and its spill directory
                    # goes when it is collected
                    self._scoped.popitem(last=False)
            self._scoped.move_to_end(teams)
            return found

    def chain_source(self) -> StoreSource:
        """The integrity reader of the store's chain rows (kept: it caches the schema)."""
        if self._chain_source is None:
            from ..integrity.sources import StoreSource

            self._chain_source = StoreSource(self.engine)
        return self._chain_source

    def close(self) -> None:
        """Flush the console's records and release connections."""
        with self._lock:
            if self._analytics is not None:
                self._analytics.close()
                self._analytics = None
            for scoped in self._scoped.values():
                scoped.close()
            self._scoped.clear()
            if self._trail is not None and self._owns_trail:
                self._trail.shutdown()
                self._trail = None
        self.engine.dispose()

    # ------------------------------------------------------------------ reads
    def _rows(self, query: Any) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query).mappings().all())
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the audit trail: {_short(exc)}") from exc

    def search(self, viewer: Viewer, filters: Filters, *, after: Cursor | None = None,
               limit: int = 50) -> list[AuditRecord]:
        """One page of matching records the viewer may see, newest first."""
        return self.search_page(viewer, filters, after=after, limit=limit)[0]

    def search_page(self, viewer: Viewer, filters: Filters, *, after: Cursor | None = None,
                    limit: int = 50, now: dt.datetime | None = None,
                    ) -> tuple[list[AuditRecord], set[str]]:
        """One page (live rows, then archived ones) and the IDs of its archived rows."""
        now = now or utcnow()

        def build(cursor: Cursor | None, size: int) -> Select[Any]:
            return search_query(viewer, filters, now=now, after=cursor, limit=size)

        return self._page(viewer, build, build, after=after, limit=limit)

    def _page(self, viewer: Viewer, live: _Build, archive: _Build, *, after: Cursor | None,
              limit: int, newest_first: bool = True,
              keep: Callable[[list[AuditRecord]], list[AuditRecord]] | None = None,
              ) -> tuple[list[AuditRecord], set[str]]:
        """One keyset page of ``live``'s rows continued into the archives, and its archived IDs.

        ``live(cursor, size)`` is the query of the store, ``archive(cursor, size)`` the
        one run through the viewer's scoped analytics (the view of the store and its
        archives); ``keep`` drops rows of the view the page must not show. Newest first,
        the archives hold the oldest records: a short live page continues from its last
        row's cursor (the live rows after it are all on the page already). Oldest first,
        they lead, so until the cursor passes the archived days the page is read
        through the view, and the rows that are not among the live ones are archived.
        """
        records = [row_to_record(r) for r in self._rows(live(after, limit))]
        if newest_first:
            if len(records) >= limit or not has_archives(self.archive_dir):
                return records, set()
        else:
            until = archived_before(self.archive_dir)
            if not has_archives(self.archive_dir) or (
                    until is not None and after is not None and after.timestamp >= until):
                return records, set()  # no archived record comes after this cursor
        live_ids = {r.id for r in records}
        out = records if newest_first else []
        cursor = Cursor(records[-1].timestamp, records[-1].id) if out else after
        analytics = self.analytics(viewer)
        while len(out) < limit:
            want = limit - len(out)
            batch = read_archived(analytics, archive(cursor, want))
            if batch:
                cursor = Cursor(batch[-1].timestamp, batch[-1].id)
            out += keep(batch) if keep is not None else batch
            if len(batch) < want:
                break
        return out, {r.id for r in out if r.id not in live_ids}

    def iter_search(self, viewer: Viewer, filters: Filters, *, cap: int,
                    page: int = 2000) -> Iterator[AuditRecord]:
        """Up to ``cap`` matching records, newest first, read page by page (exports)."""
        now = utcnow()  # one time range for the whole export
        after: Cursor | None = None
        left = cap
        while left > 0:
            want = min(page, left)
            rows = self.search_page(viewer, filters, after=after, limit=want, now=now)[0]
            yield from rows
            left -= len(rows)
            if len(rows) < want:
                return
            after = Cursor(rows[-1].timestamp, rows[-1].id)

    def record(self, viewer: Viewer, record_id: str) -> AuditRecord | None:
        """The record ``record_id`` if the viewer may see it (live or archived)."""
        return self.find_record(viewer, record_id)[0]

    def find_record(self, viewer: Viewer, record_id: str) -> tuple[AuditRecord | None, bool]:
        """The record ``record_id`` if the viewer may see it, and whether it is archived."""
        rows = self._rows(record_query(viewer, record_id))
        if rows:
            return row_to_record(rows[0]), False
        if not has_archives(self.archive_dir):
            return None, False
        found = read_archived(self.analytics(viewer), record_query(viewer, record_id))
        return (found[0], True) if found else (None, False)

    def related(self, viewer: Viewer, record: AuditRecord, *, limit: int = 20,
                ) -> dict[str, list[AuditRecord]]:
        """Records of the same trace, the same resource, and by the same actor nearby."""
        out: dict[str, list[AuditRecord]] = {}
        around = Filters(range="custom", start=record.timestamp - dt.timedelta(hours=1),
                         end=record.timestamp + dt.timedelta(hours=1))
        wanted = {
            "trace": Filters(range="all", trace_id=record.trace_id or "") if record.trace_id
            else None,
            "resource": Filters(range="all", resource_type=record.resource_type or "",
                                resource_id=record.resource_id or "")
            if record.resource_type and record.resource_id else None,
            "actor": Filters(range="custom", start=around.start, end=around.end,
                             actor=record.user_id) if record.user_id else None,
        }
        for name, filters in wanted.items():
            if filters is None:
                out[name] = []
                continue
            found = self.search(viewer, filters, limit=limit + 1)
            out[name] = [r for r in found if r.id != record.id][:limit]
        return out

    def reviews(self, record_ids: Sequence[str]) -> dict[str, list[Review]]:
        """The reviews of each of ``record_ids`` (oldest first; live or archived)."""
        if not record_ids:
            return {}
        rows = self._rows(reviewed_ids_query(list(record_ids), self.dialect))
        if has_archives(self.archive_dir):
            # a review belongs to no team: looked up in the whole trail, for records the
            # caller already knows the viewer may see; a live review is in the view too
            rows = [dict(r) for r in self._read_view(reviewed_ids_query(list(record_ids)))]
        out: dict[str, list[Review]] = {}
        for row in rows:
            context = row["context"] if isinstance(row["context"], dict) else {}
            ts = row_to_time(row["timestamp"])
            out.setdefault(row["resource_id"], []).append(Review(
                row["resource_id"], row["user_id"], ts, str(context.get("note", "")), row["id"]))
        return out

    def _read_view(self, query: Select[Any]) -> list[dict[str, Any]]:
        return read_rows(self.analytics(None), query)

    def review_queue(self, viewer: Viewer, filters: Filters | None, *, limit: int = 50,
                     after: Cursor | None = None) -> list[AuditRecord]:
        """Records awaiting review, oldest first (live or archived)."""
        return self.review_queue_page(viewer, filters, limit=limit, after=after)[0]

    def review_queue_page(self, viewer: Viewer, filters: Filters | None, *, limit: int = 50,
                          after: Cursor | None = None) -> tuple[list[AuditRecord], set[str]]:
        """One page of the review queue, oldest first, and the IDs of its archived rows."""
        now = utcnow()

        def build(cursor: Cursor | None, size: int, *, unreviewed: bool = True) -> Select[Any]:
            return review_queue_query(viewer, filters, now=now, limit=size, after=cursor,
                                      dialect=self.dialect, unreviewed=unreviewed)

        def unreviewed(batch: list[AuditRecord]) -> list[AuditRecord]:
            done = self.reviews([r.id for r in batch])
            return [r for r in batch if not done.get(r.id)]

        return self._page(viewer, build, lambda c, n: build(c, n, unreviewed=False),
                          after=after, limit=limit, newest_first=False, keep=unreviewed)

    def ping(self) -> bool:
        """Whether the store answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(select(audit_trails.c.id).limit(1))
        except SQLAlchemyError:
            return False
        return True

    def connect(self) -> Connection:
        """A read-only connection (the caller closes it)."""
        return self.engine.connect()

    # ------------------------------------------------------------------ writes
    def audit(self, action: str, viewer: Viewer, *, resource_id: str,
              context: dict[str, Any], resource_type: str = "audit_trail",
              client_ip: str | None = None, user_agent: str | None = None,
              request_path: str | None = None, request_method: str | None = None,
              mode: str | None = None) -> AuditRecord | None:
        """Record one of the console's own actions (``audit.read``/``review``/``export``)."""
        assert action in CONSOLE_ACTIONS
        return self.trail.record(
            action, mode=mode, user_id=viewer.name, resource_type=resource_type,
            resource_id=resource_id, context=context, client_ip=client_ip,
            user_agent=user_agent, request_path=request_path, request_method=request_method,
            # the console's own records are never work for its review queue
            requires_review=False)

    def review(self, viewer: Viewer, record_id: str, note: str, **request: Any) -> Review:
        """Mark ``record_id`` reviewed by ``viewer`` with ``note`` (four eyes)."""
        record = self.record(viewer, record_id)
        if record is None:
            raise ReviewError(f"no record {record_id!r} visible to {viewer.name}")
        if viewer.name in participants(record):
            raise ReviewError("four eyes: nobody reviews their own record")
        if record.action in CONSOLE_ACTIONS:
            raise ReviewError("the console's own records need no review")
        if self.reviews([record_id]).get(record_id):
            raise ReviewError(f"record {record_id} is already reviewed")
        # sync: the review is committed before the reviewer is told it is done
        written = self.audit("audit.review", viewer, resource_type="audit_record",
                             resource_id=record_id, context={"note": note[:4000]},
                             mode="sync", **request)
        if written is None:
            raise ReviewError("the audit trail is disabled: reviews cannot be recorded")
        return Review(record_id, viewer.name, written.timestamp, note[:4000], written.id)


def row_to_time(value: Any) -> dt.datetime:
    """A stored timestamp as an aware UTC datetime."""
    stamp: dt.datetime = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC)


def _short(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:300]
