"""Search filters, team scoping and keyset cursors of the console, as SQLAlchemy Core.

Every value is a bound parameter; the scoping of the viewer (teams, ``restricted``) is
part of the same ``WHERE`` as the filters, so a record the viewer may not see is never
read, counted or exported. Pages read newest first with ``id`` breaking timestamp ties
(keyset pagination: stable while records keep arriving, unlike ``OFFSET``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, false, func, not_, or_, select, true
from sqlalchemy.sql.expression import literal

from ..errors import AuditError
from ..store.schema import RECORD_COLUMNS, audit_trails

__all__ = [
    "CONSOLE_ACTIONS",
    "RANGE_PRESETS",
    "RESTRICTED",
    "Cursor",
    "FilterError",
    "Filters",
    "Viewer",
    "decode_cursor",
    "encode_cursor",
    "record_query",
    "review_queue_query",
    "reviewed_ids_query",
    "scope_clause",
    "search_query",
]

#: The classification only admins may see.
RESTRICTED = "restricted"

#: Actions the console itself records: never work for its review queue.
CONSOLE_ACTIONS: tuple[str, ...] = ("audit.read", "audit.review", "audit.export")

#: Time range presets of the search page (``range=``), in seconds; ``all`` has no bound.
RANGE_PRESETS: dict[str, int | None] = {
    "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "90d": 90 * 86400,
    "all": None,
}
DEFAULT_RANGE = "24h"

_MAX_VALUE = 512  # longer than any stored column it is compared with


class FilterError(AuditError):
    """A filter or cursor the console cannot use (answered with 400 and the message)."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking: name, role (``auditor`` or ``admin``) and teams (``*``: all)."""

    name: str
    role: str
    teams: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        """Whether the viewer is an admin (all teams, restricted records, integrity)."""
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class Filters:
    """The search filters, as they travel in the URL (every field optional)."""

    range: str = DEFAULT_RANGE
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    actor: str = ""          # user_id or user_email (exact)
    acting_as: str = ""
    auth_method: str = ""
    action: str = ""
    resource_type: str = ""
    resource_id: str = ""
    team: str = ""
    outcome: str = ""        # success | failure
    classification: str = ""
    review: str = ""         # required | not_required
    service: str = ""
    trace_id: str = ""
    client_ip: str = ""
    q: str = ""              # free text over resource name and error message

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Filters:
        """Build filters from query parameters; raise :class:`FilterError` when invalid."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in {"start", "end"}:
                continue
            raw = params.get(f.name)
            if raw is None:
                continue
            value = raw.strip()
            if len(value) > _MAX_VALUE:
                raise FilterError(f"filter {f.name} is longer than {_MAX_VALUE} characters")
            values[f.name] = value
        preset = values.get("range") or DEFAULT_RANGE
        if preset not in RANGE_PRESETS and preset != "custom":
            raise FilterError(f"range must be one of {', '.join(RANGE_PRESETS)} or custom")
        values["range"] = preset
        if values.get("outcome", "") not in {"", "success", "failure"}:
            raise FilterError("outcome must be success or failure")
        if values.get("review", "") not in {"", "required", "not_required"}:
            raise FilterError("review must be required or not_required")
        for name in ("start", "end"):
            raw = (params.get(name) or "").strip()
            if raw:
                values[name] = parse_time(raw, name)
                values["range"] = "custom"
        return cls(**values)

    def bounds(self, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The time range: the preset's (relative to ``now``) or the custom one."""
        if self.range == "custom":
            return self.start, self.end
        seconds = RANGE_PRESETS[self.range]
        return (now - dt.timedelta(seconds=seconds) if seconds is not None else None), None

    def to_params(self) -> dict[str, str]:
        """The non-empty filters as query parameters (for links and the next page)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dt.datetime):
                out[f.name] = value.isoformat()
            elif value and not (f.name == "range" and value == DEFAULT_RANGE):
                out[f.name] = str(value)
        return out


def parse_time(raw: str, name: str = "time") -> dt.datetime:
    """Parse an ISO 8601 time (``datetime-local`` values too); naive means UTC."""
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise FilterError(f"{name}: expected an ISO 8601 time, got {raw[:40]!r}") from exc
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# ------------------------------------------------------------------ keyset cursors

@dataclass(frozen=True, slots=True)
class Cursor:
    """The position after the last record of a page: its timestamp and ``id``."""

    timestamp: dt.datetime
    id: str


def encode_cursor(timestamp: dt.datetime, record_id: str) -> str:
    """Opaque cursor: URL-safe base64 of ``[timestamp, id]``."""
    ts = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=dt.UTC)
    raw = json.dumps([ts.astimezone(dt.UTC).isoformat(), record_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """Decode and validate a cursor; raise :class:`FilterError` for anything else."""
    if not token or len(token) > 256:
        raise FilterError("invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise FilterError("invalid cursor") from exc
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, str) for v in value) or not 0 < len(value[1]) <= 64):
        raise FilterError("invalid cursor")
    try:
        ts = parse_time(value[0])
    except FilterError as exc:
        raise FilterError("invalid cursor") from exc
    return Cursor(ts, value[1])


# ------------------------------------------------------------------ queries

def scope_clause(viewer: Viewer) -> ColumnElement[bool]:
    """What ``viewer`` may see: admins everything; others their teams, never restricted."""
    t = audit_trails.c
    if viewer.is_admin:
        return true()
    not_restricted = or_(t.data_classification.is_(None), t.data_classification != RESTRICTED)
    if "*" in viewer.teams:
        return not_restricted
    if not viewer.teams:
        return false()
    return and_(t.team_id.in_(viewer.teams), not_restricted)


def _filter_clauses(filters: Filters, now: dt.datetime) -> list[ColumnElement[bool]]:
    t = audit_trails.c
    clauses: list[ColumnElement[bool]] = []
    start, end = filters.bounds(now)
    if start is not None:
        clauses.append(t.timestamp >= start)
    if end is not None:
        clauses.append(t.timestamp <= end)
    if filters.actor:
        if "@" in filters.actor:  # an email address: the user's email or an email user_id
            clauses.append(or_(t.user_email == filters.actor, t.user_id == filters.actor))
        else:
            clauses.append(t.user_id == filters.actor)
    exact = {"acting_as": filters.acting_as, "auth_method": filters.auth_method,
             "action": filters.action,
             "resource_type": filters.resource_type, "resource_id": filters.resource_id,
             "team_id": filters.team, "data_classification": filters.classification,
             "service_name": filters.service, "trace_id": filters.trace_id.lower(),
             "client_ip": filters.client_ip}
    for column, value in exact.items():
        if value:
            clauses.append(t[column] == value)
    if filters.outcome:
        clauses.append(t.success.is_(filters.outcome == "success"))
    if filters.review:
        clauses.append(t.requires_review.is_(filters.review == "required"))
    if filters.q:
        pattern = "%" + _escape_like(filters.q.lower()) + "%"
        clauses.append(or_(func.lower(t.resource_name).like(pattern, escape="\\"),
                           func.lower(t.error_message).like(pattern, escape="\\")))
    return clauses


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _columns() -> list[Any]:
    t = audit_trails.c
    return [t[name] for name in RECORD_COLUMNS]


def search_query(viewer: Viewer, filters: Filters, *, now: dt.datetime,
                 after: Cursor | None = None, limit: int = 50) -> Select[Any]:
    """The records matching ``filters`` that ``viewer`` may see, newest first."""
    t = audit_trails.c
    query = select(*_columns()).where(scope_clause(viewer), *_filter_clauses(filters, now))
    if after is not None:
        query = query.where(or_(t.timestamp < after.timestamp,
                                and_(t.timestamp == after.timestamp, t.id < after.id)))
    return query.order_by(t.timestamp.desc(), t.id.desc()).limit(limit)


def record_query(viewer: Viewer, record_id: str) -> Select[Any]:
    """One record by ``id``, only if ``viewer`` may see it."""
    return select(*_columns()).where(audit_trails.c.id == record_id, scope_clause(viewer))


def _is_review(action: Any, dialect: str) -> ColumnElement[bool]:
    # SQLite: compared through coalesce() so that its planner never looks reviews up by
    # action (every review of the store) rather than by resource (this record's); it has
    # no statistics to tell them apart on a young store. PostgreSQL has them, and
    # coalesce() would spoil its row estimate (and so its anti-join plan).
    if dialect == "sqlite":
        return func.coalesce(action, "") == "audit.review"
    return action == "audit.review"  # type: ignore[no-any-return]


def reviewed_ids_query(record_ids: list[str], dialect: str = "sqlite") -> Select[Any]:
    """The reviews (``audit.review`` on ``audit_record/<id>``) of ``record_ids``."""
    t = audit_trails.c
    return (select(t.resource_id, t.user_id, t.timestamp, t.context, t.id)
            .where(t.resource_type == "audit_record", t.resource_id.in_(record_ids),
                   _is_review(t.action, dialect))
            .order_by(t.timestamp))


def review_queue_query(viewer: Viewer, filters: Filters | None, *, now: dt.datetime,
                       limit: int = 50, after: Cursor | None = None,
                       dialect: str = "sqlite", unreviewed: bool = True) -> Select[Any]:
    """Records that require review and have none yet, oldest first.

    The console's own records (reads, reviews, exports) are never work here. With
    ``unreviewed=False`` the query leaves out its "no review yet" test: a team-scoped
    view over the archives holds no reviews (they belong to no team), so the caller
    looks the candidates' reviews up itself.
    """
    t = audit_trails.c
    # ``= true`` (not ``IS``): the form the partial index ix_audit_trails_review names
    query = select(*_columns()).where(t.requires_review == true(),
                                      t.action.not_in(CONSOLE_ACTIONS), scope_clause(viewer))
    if unreviewed:
        reviews = audit_trails.alias("reviews")
        query = query.where(not_(exists(select(literal(1)).where(
            reviews.c.resource_type == "audit_record", reviews.c.resource_id == t.id,
            _is_review(reviews.c.action, dialect)))))
    if filters is not None:
        query = query.where(*_filter_clauses(filters, now))
    if after is not None:
        query = query.where(or_(t.timestamp > after.timestamp,
                                and_(t.timestamp == after.timestamp, t.id > after.id)))
    return query.order_by(t.timestamp.asc(), t.id.asc()).limit(limit)
