"""Archived records in the console: its pages continue into Parquet.

Retention (``otel_audit.retention.prune``) moves old records out of the store into
day-partitioned Parquet files with exactly the ``audit_trails`` columns. The console's
pages read the live store through SQLAlchemy Core; when a page of a search comes back
short (the live rows ran out), it continues from the last row's keyset cursor through
the viewer's :class:`~otel_audit.analytics.AuditAnalytics`: the same SQLAlchemy query,
compiled for DuckDB with bound parameters, over the view that joins the store and its
archives (for a non-admin, the view scoped to their teams without restricted records).
The live rows after that cursor are all already on the page, so what the view adds is
archived. Search, export, resource and actor pages (newest first) work so; the review
queue (oldest first) reads its pages through the view until its cursor passes the
archived days (see ``ConsoleData._page``).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select
from sqlalchemy.dialects import postgresql

from ..fields import JSON_FIELDS
from ..record import AuditRecord
from ..store.reader import row_to_record

if TYPE_CHECKING:
    from ..analytics import AuditAnalytics

__all__ = ["archived_before", "has_archives", "read_archived", "read_rows"]

# DuckDB's SQL accepts PostgreSQL's rendering of these queries (``?::VARCHAR`` casts,
# ``LIKE ... ESCAPE``); qmark binds every value as a parameter
_DIALECT = postgresql.dialect(paramstyle="qmark")  # type: ignore[no-untyped-call]


def has_archives(archive_dir: str | None) -> bool:
    """Whether ``archive_dir`` holds any Parquet file."""
    if not archive_dir:
        return False
    root = Path(archive_dir)
    return root.is_dir() and next(root.rglob("*.parquet"), None) is not None


def archived_before(archive_dir: str | None) -> dt.datetime | None:
    """A time no archived record reaches (from prune's ``day=YYYY-MM-DD`` directories).

    ``None`` when there is no archive or a file lies outside that layout. Two days past
    the last day: the day of a record is the date of its timestamp in the time zone of
    the prune's DuckDB session, which may not be UTC.
    """
    if not has_archives(archive_dir):
        return None
    last: dt.date | None = None
    for path in Path(str(archive_dir)).rglob("*.parquet"):
        name = path.parent.name
        try:
            day = dt.date.fromisoformat(name.removeprefix("day="))
        except ValueError:
            return None
        if not name.startswith("day="):
            return None
        last = day if last is None or day > last else last
    if last is None:
        return None
    return dt.datetime.combine(last + dt.timedelta(days=2), dt.time(), dt.UTC)


def read_rows(analytics: AuditAnalytics, query: Select[Any]) -> list[dict[str, Any]]:
    """Run the console's ``query`` over ``analytics``' view (store plus archives): rows."""
    compiled = query.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    relation = analytics.sql(str(compiled), params)
    columns = list(relation.columns)
    out = []
    for row in relation.fetchall():
        values = dict(zip(columns, row, strict=True))
        for name in JSON_FIELDS:  # DuckDB hands JSON over as its text
            if isinstance(values.get(name), str):
                values[name] = json.loads(values[name])
        out.append(values)
    return out


def read_archived(analytics: AuditAnalytics, query: Select[Any]) -> list[AuditRecord]:
    """Run the console's record ``query`` over ``analytics``' view: the records."""
    return [row_to_record(values) for values in read_rows(analytics, query)]
