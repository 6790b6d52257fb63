"""Reading the committed trail in commit order, per stream, after a cursor.

Within a stream, ``seq`` order is commit order (the sealer runs right before the
store write, under the writer's lock; ``docs/integrity.md``). Two things break the
run of positions, and the reader tells them apart:

* a position noted in ``audit_duplicates`` (a record the store already held): nothing
  to send, the cursor moves past it;
* a missing position: a batch that failed and waits in the spool or journal commits
  later with its original ``seq``, after younger batches. The reader stops before it
  (:attr:`StreamBatch.gap`); the forwarder skips it only once it has stayed missing
  for a grace period (a position sealed for a record that was lost, or rows pruned).

Rows without a stream (written before the integrity chain existed) are not forwarded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, Text, and_, cast, func, select, text

from ..fields import JSON_FIELDS
from ..record import AuditRecord
from ..store.schema import audit_duplicates, audit_trails
from .items import ForwardItem, RawJSON

__all__ = ["RAW_JSON_DIALECTS", "StreamBatch", "read_after", "stream_heads"]


class StreamBatch(NamedTuple):
    """Records to send after ``start`` and where the cursor stands once they are sent."""

    items: list[ForwardItem]
    #: the cursor after these items and the noted duplicates among them
    end: int
    #: the first missing position after ``end``, if the read stopped at one
    gap: int | None


#: The distinct streams by a skip scan of ``ux_audit_trails_stream_seq``: one index probe
#: per stream instead of a walk of every row (the forwarder looks every poll interval).
_STREAMS = text("""
WITH RECURSIVE s(stream) AS (
    SELECT min(stream) FROM audit_trails
    UNION ALL
    SELECT (SELECT min(t.stream) FROM audit_trails t WHERE t.stream > s.stream)
    FROM s WHERE s.stream IS NOT NULL
)
SELECT stream FROM s WHERE stream IS NOT NULL
""")


def stream_heads(conn: Connection) -> dict[str, int]:
    """``stream -> highest committed seq`` of every stream (index probes only)."""
    heads: dict[str, int] = {}
    for (stream,) in conn.execute(_STREAMS):
        seq = conn.execute(select(func.max(audit_trails.c.seq))
                           .where(audit_trails.c.stream == stream)).scalar()
        if seq is not None:
            heads[stream] = int(seq)
    return heads


def _noted(conn: Connection, stream: str, first: int, last: int) -> set[int]:
    rows = conn.execute(select(audit_duplicates.c.seq).where(and_(
        audit_duplicates.c.stream == stream, audit_duplicates.c.seq >= first,
        audit_duplicates.c.seq <= last)))
    return {int(seq) for (seq,) in rows}


_FIELDS = AuditRecord._fields
_TIMESTAMP = _FIELDS.index("timestamp")
_REVIEW, _SUCCESS = (_FIELDS.index(name) for name in ("requires_review", "success"))
_JSON_INDEXES = tuple(i for i, name in enumerate(_FIELDS) if name in JSON_FIELDS)
# tuples made directly (``_make`` is a Python-level call, paid per record read)
_new = tuple.__new__
_UTC = dt.UTC


def _record(row: Sequence[Any], raw_json: bool = False) -> AuditRecord:
    """The record of a row selected as ``seq, *AuditRecord._fields`` (what
    ``row_to_record`` does, by position: the forwarder reads every record it sends);
    ``raw_json``: the JSON fields, read as text, become :class:`RawJSON`."""
    values = list(row[1:])
    ts = values[_TIMESTAMP]
    if isinstance(ts, str):
        ts = dt.datetime.fromisoformat(ts)
    if isinstance(ts, dt.datetime) and ts.tzinfo is None:
        values[_TIMESTAMP] = ts.replace(tzinfo=_UTC)
    else:
        values[_TIMESTAMP] = ts
    values[_REVIEW] = bool(values[_REVIEW])
    values[_SUCCESS] = bool(values[_SUCCESS])
    if raw_json:
        for index in _JSON_INDEXES:
            if values[index] is not None:
                values[index] = RawJSON(values[index])
    return _new(AuditRecord, values)


#: Stores whose JSON columns read as their text with ``CAST(... AS TEXT)``: SQLite's TEXT
#: (the document byte for byte) and PostgreSQL's JSONB (its text output)
RAW_JSON_DIALECTS = frozenset({"sqlite", "postgresql"})


def read_after(conn: Connection, stream: str, after: int, limit: int, *,
               raw_json: bool = False) -> StreamBatch:
    """Up to ``limit`` records of ``stream`` after position ``after``, in order,
    stopping before the first missing position that is not a noted duplicate.

    ``raw_json``: the JSON fields hold their stored text as :class:`RawJSON` instead of
    the parsed document (only on :data:`RAW_JSON_DIALECTS`)."""
    t = audit_trails.c
    if raw_json:
        columns = [cast(t[name], Text) if name in JSON_FIELDS else t[name]
                   for name in _FIELDS]
    else:
        columns = [t[name] for name in _FIELDS]
    # The upper bound keeps the read to at most ``limit`` positions whatever plan the
    # database picks (PostgreSQL without statistics on a freshly filled table scans every
    # row after ``after`` and sorts them, once per batch); it returns a prefix of what
    # the unbounded read returns (positions missing in the range only make it shorter),
    # and the loop below treats it the same way. fetchall: one driver call.
    rows: Sequence[Any] = conn.execute(
        select(t.seq, *columns)
        .where(and_(t.stream == stream, t.seq > after, t.seq <= after + limit))
        .order_by(t.seq).limit(limit)
    ).fetchall()
    items: list[ForwardItem] = []
    end = after
    for row in rows:
        seq = int(row[0])
        if seq != end + 1:
            noted = _noted(conn, stream, end + 1, seq - 1)
            while end + 1 in noted:
                end += 1
            if seq != end + 1:
                return StreamBatch(items, end, end + 1)
        items.append(_new(ForwardItem, (stream, seq, _record(row, raw_json))))
        end = seq
    if len(rows) < limit:
        # past the last row: duplicates noted at the head (nothing stored after them)
        noted = _noted(conn, stream, end + 1, end + limit)
        while end + 1 in noted:
            end += 1
    return StreamBatch(items, end, None)
