"""Archived records in the console: searches and record pages continue into Parquet.

Retention (``otel_audit.retention.prune``) moves old records out of the store into
day-partitioned Parquet files with exactly the ``audit_trails`` columns. The console's
pages read the live store through SQLAlchemy Core; when a page of a search comes back
short (the live rows ran out), it continues from the last row's keyset cursor through
the viewer's :class:`~otel_audit.analytics.AuditAnalytics`: the same SQLAlchemy query,
compiled for DuckDB with bound parameters, over the view that joins the store and its
archives (for a non-admin, the view scoped to their teams without restricted records).
The live rows after that cursor are all already on the page, so what the view adds is
archived.
"""

from __future__ import annotations

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

__all__ = ["has_archives", "read_archived"]

# DuckDB's SQL accepts PostgreSQL's rendering of these queries (``?::VARCHAR`` casts,
# ``LIKE ... ESCAPE``); qmark binds every value as a parameter
_DIALECT = postgresql.dialect(paramstyle="qmark")  # type: ignore[no-untyped-call]


def has_archives(archive_dir: str | None) -> bool:
    """Whether ``archive_dir`` holds any Parquet file."""
    if not archive_dir:
        return False
    root = Path(archive_dir)
    return root.is_dir() and next(root.rglob("*.parquet"), None) is not None


def read_archived(analytics: AuditAnalytics, query: Select[Any]) -> list[AuditRecord]:
    """Run the console's ``query`` over ``analytics``' view (store plus archives)."""
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
        out.append(row_to_record(values))
    return out
