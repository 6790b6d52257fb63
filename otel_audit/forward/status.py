"""Health of each destination: lag in records and seconds, last success, last error."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from sqlalchemy import Engine, and_, select

from ..store.schema import audit_trails
from .cursors import DestinationState, destination_states
from .reader import stream_heads

__all__ = ["DestinationHealth", "health"]


class DestinationHealth(NamedTuple):
    """One destination as ``forward --status`` prints it."""

    destination: str
    lag_records: int
    #: age of the oldest committed record not yet acknowledged (0 when caught up)
    lag_seconds: float
    last_success: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None
    rejected: int
    holder: str | None


def _utc(value: dt.datetime | str) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def health(engine: Engine, *, now: dt.datetime | None = None) -> list[DestinationHealth]:
    """The health of every destination that has forwarded from the store at ``engine``.

    Records behind: per stream, the positions committed after the cursor (the head's
    ``seq`` minus the cursor, so noted duplicates count until passed).
    """
    now = now or dt.datetime.now(dt.UTC)
    states: list[DestinationState] = destination_states(engine)
    t = audit_trails.c
    result = []
    with engine.connect() as conn:
        heads = stream_heads(conn)
        for state in states:
            behind = 0
            oldest: dt.datetime | None = None
            for stream, head in heads.items():
                cursor = state.cursors.get(stream, 0)
                if head <= cursor:
                    continue
                behind += head - cursor
                first = conn.execute(select(t.timestamp).where(and_(
                    t.stream == stream, t.seq > cursor)).order_by(t.seq).limit(1)).scalar()
                if first is not None:
                    first = _utc(first)
                    oldest = first if oldest is None else min(oldest, first)
            seconds = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
            result.append(DestinationHealth(
                state.destination, behind, seconds, state.last_success, state.last_error,
                state.last_error_at, state.rejected,
                state.holder if state.lease_until and state.lease_until > now else None))
    return result
