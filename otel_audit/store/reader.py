"""Reading records back from the store (newest first, filters, keyset pagination)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, and_, or_, select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from ..record import AuditRecord
from .schema import RECORD_COLUMNS, audit_trails

__all__ = ["query_records", "row_to_record"]


def row_to_record(row: Mapping[str, Any] | RowMapping) -> AuditRecord:
    """Build an :class:`AuditRecord` from a stored row (timestamps come back as UTC)."""
    values = {name: row[name] for name in RECORD_COLUMNS}
    ts = values["timestamp"]
    if isinstance(ts, str):
        ts = dt.datetime.fromisoformat(ts)
    if isinstance(ts, dt.datetime) and ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    values["timestamp"] = ts
    values["requires_review"] = bool(values["requires_review"])
    values["success"] = bool(values["success"])
    return AuditRecord(**values)


def query_records(
    bind: Engine | Connection,
    *,
    resource_type: str | None = None,
    resource_id: str | None = None,
    user_id: str | None = None,
    action: str | None = None,
    trace_id: str | None = None,
    start_time: dt.datetime | None = None,
    end_time: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
    after: AuditRecord | None = None,
) -> list[AuditRecord]:
    """Return matching records, newest first, ``id`` breaking timestamp ties.

    ``after`` is keyset pagination: pass the last record of a page to get the next one
    (stable under concurrent inserts, unlike ``offset``). Filter values are bound
    parameters and match literally.
    """
    t = audit_trails.c
    query = select(*[t[name] for name in RECORD_COLUMNS])
    filters = {
        "resource_type": resource_type,
        "resource_id": resource_id,
        "user_id": user_id,
        "action": action,
        "trace_id": trace_id,
    }
    for name, value in filters.items():
        if value is not None:
            query = query.where(t[name] == value)
    if start_time is not None:
        query = query.where(t.timestamp >= _utc(start_time))
    if end_time is not None:
        query = query.where(t.timestamp <= _utc(end_time))
    if after is not None:
        ts = _utc(after.timestamp)
        query = query.where(or_(t.timestamp < ts, and_(t.timestamp == ts, t.id < after.id)))
    query = query.order_by(t.timestamp.desc(), t.id.desc()).limit(limit).offset(offset)
    try:
        if isinstance(bind, Engine):
            with bind.connect() as conn:
                rows = conn.execute(query).mappings().all()
        else:
            rows = bind.execute(query).mappings().all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the audit trail: {exc}") from exc
    return [row_to_record(row) for row in rows]


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
