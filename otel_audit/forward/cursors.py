"""The forwarder's state in the store: cursors, the destination's lease, rejects, health.

``audit_forward_cursors`` holds one row per (destination, stream): the last ``seq`` the
destination acknowledged, and a missing position the reader stopped at with the time
it was first seen. The row of stream ``''`` belongs to the destination itself: its
lease (``holder``, ``lease_until``), last success and last error.

The lease is how two forwarders for the same destination avoid sending twice, on
SQLite and PostgreSQL alike: taking it is one conditional ``UPDATE`` (free, expired,
already ours, or held by a process of this host that no longer exists), and every
cursor move is conditional on still holding it. A forwarder renews it while it works
and waits; one killed on another host is replaced once its lease expires.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..store.schema import audit_forward_cursors as cursors_t
from ..store.schema import audit_forward_rejects as rejects_t
from .errors import LeaseLostError
from .items import ForwardItem

__all__ = ["CursorStore", "DestinationState", "Reject"]

#: ``stream`` of the destination's own row.
DESTINATION_ROW = ""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    when: dt.datetime = value
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


class Reject(NamedTuple):
    """One record (or range of lost positions) a destination will not receive."""

    stream: str
    seq: int
    record_id: str
    reason: str


class DestinationState(NamedTuple):
    """What ``forward --status`` shows of one destination."""

    destination: str
    cursors: dict[str, int]
    holder: str | None
    lease_until: dt.datetime | None
    last_success: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None
    rejected: int


class CursorStore:
    """Cursors, lease and rejects of one destination in the store at ``engine``."""

    def __init__(self, engine: Engine, destination: str, *, lease_seconds: float = 30.0
                 ) -> None:
        self.engine = engine
        self.destination = destination
        self.lease_seconds = lease_seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: the connection cursor moves run on (see _mover), and who uses it now
        self._conn: Connection | None = None
        self._move_lock = threading.Lock()

    # ----------------------------------------------------------------- lease

    def _ensure_row(self, conn: Connection, stream: str, seq: int = 0) -> None:
        exists = conn.execute(select(cursors_t.c.seq).where(and_(
            cursors_t.c.destination == self.destination, cursors_t.c.stream == stream))
        ).first()
        if exists is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(cursors_t).values(
                        destination=self.destination, stream=stream, seq=seq,
                        updated_at=_now()))
            except IntegrityError:
                pass  # another forwarder inserted it first

    def try_acquire(self) -> bool:
        """Take or renew the lease; ``False`` while another live forwarder holds it."""
        now = _now()
        c = cursors_t.c
        with self.engine.begin() as conn:
            self._ensure_row(conn, DESTINATION_ROW)
            current = conn.execute(select(c.holder).where(and_(
                c.destination == self.destination, c.stream == DESTINATION_ROW))).scalar()
            takeable = [c.holder.is_(None), c.holder == self.holder, c.lease_until < now]
            if current and _dead_local(current):
                takeable.append(c.holder == current)
            done = conn.execute(update(cursors_t).where(and_(
                c.destination == self.destination, c.stream == DESTINATION_ROW,
                or_(*takeable))).values(
                holder=self.holder,
                lease_until=now + dt.timedelta(seconds=self.lease_seconds)))
            return done.rowcount == 1

    def renew(self) -> None:
        """Extend the lease; raise :class:`LeaseLostError` if another forwarder has it."""
        if not self.try_acquire():
            raise LeaseLostError(f"{self.destination}: another forwarder took the lease")

    def release(self) -> None:
        """Give the lease up (a waiting forwarder takes over at once); close the
        connection kept for cursor moves."""
        self.close()
        c = cursors_t.c
        with self.engine.begin() as conn:
            conn.execute(update(cursors_t).where(and_(
                c.destination == self.destination, c.stream == DESTINATION_ROW,
                c.holder == self.holder)).values(holder=None, lease_until=None))

    def _check_lease(self, conn: Connection, **values: Any) -> None:
        """Renew the lease (and set ``values`` on the destination's row) in one
        statement; :class:`LeaseLostError` when another forwarder holds it."""
        c = cursors_t.c
        held = conn.execute(update(cursors_t).where(and_(
            c.destination == self.destination, c.stream == DESTINATION_ROW,
            c.holder == self.holder)).values(
            lease_until=_now() + dt.timedelta(seconds=self.lease_seconds), **values))
        if held.rowcount != 1:
            raise LeaseLostError(f"{self.destination}: another forwarder took the lease")

    # --------------------------------------------------------------- cursors

    def cursors(self) -> dict[str, int]:
        """``stream -> last acknowledged seq`` of this destination."""
        c = cursors_t.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.stream, c.seq).where(and_(
                c.destination == self.destination, c.stream != DESTINATION_ROW)))
            return {stream: int(seq) for stream, seq in rows}

    def gaps(self) -> dict[str, tuple[int, dt.datetime]]:
        """``stream -> (missing seq, first seen)`` of the streams stopped at a gap."""
        c = cursors_t.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.stream, c.gap_seq, c.gap_since).where(and_(
                c.destination == self.destination, c.gap_seq.is_not(None))))
            return {s: (int(g), _utc(t) or _now()) for s, g, t in rows}

    def advance(self, stream: str, seq: int, rejects: Iterable[Reject] = ()) -> None:
        """Move ``stream``'s cursor to ``seq`` and store ``rejects``, in one transaction,
        only while this forwarder holds the lease."""
        now = _now()
        rows = [dict(destination=self.destination, created_at=now, **r._asdict())
                for r in rejects]
        with self._move_lock:
            while True:  # at most twice: the second time on a fresh connection
                conn, fresh = self._mover()
                try:
                    self._move(conn, stream, seq, rows, now)
                    return
                except DBAPIError as exc:
                    self._drop_mover()
                    # the kept connection was gone (the server restarted): once more on
                    # a new one, unless rejects might already be stored (the commit was
                    # underway)
                    if fresh or rows or not exc.connection_invalidated:
                        raise
                except BaseException:
                    self._drop_mover()
                    raise

    def _move(self, conn: Connection, stream: str, seq: int, rows: list[dict[str, Any]],
              now: dt.datetime) -> None:
        c = cursors_t.c
        move = update(cursors_t).where(and_(
            c.destination == self.destination, c.stream == stream)).values(
            seq=seq, updated_at=now, gap_seq=None, gap_since=None)
        # as few statements as it takes (this runs once per acknowledged batch, between
        # the acknowledgement and the next send): the lease and the last success on the
        # destination's row at once; the stream's row made only when the move found none
        with conn.begin():
            self._check_lease(conn, last_success=now)
            if conn.execute(move).rowcount != 1:
                self._ensure_row(conn, stream)
                conn.execute(move)
            if rows:
                conn.execute(insert(rejects_t), rows)

    def _mover(self) -> tuple[Connection, bool]:
        """The connection cursor moves run on, and whether it was just opened.

        It is kept from one move to the next (a move then costs no pool checkout and no
        ping) and never goes back to the pool. On PostgreSQL its commits do not wait for
        the WAL flush (``synchronous_commit = off``, this session only): a move is
        visible and survives the forwarder's own crash at once, and a database crash
        can take back at most the last moves of its last fraction of a second, whose
        batches are then sent again (at least once; the record ID is the idempotency key).
        """
        conn = self._conn
        if conn is not None and not conn.closed and not conn.invalidated:
            return conn, False
        conn = self.engine.connect()
        try:
            conn.detach()  # closed for good, never handed to another user of the pool
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET synchronous_commit TO off")
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn, True

    def _drop_mover(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                conn.close()

    def close(self) -> None:
        """Close the connection kept for cursor moves (opened again when needed)."""
        with self._move_lock:
            self._drop_mover()

    def note_gap(self, stream: str, seq: int) -> dt.datetime:
        """Remember that ``stream`` stops at missing position ``seq``; return since when."""
        c = cursors_t.c
        with self.engine.begin() as conn:
            self._ensure_row(conn, stream)
            row = conn.execute(select(c.gap_seq, c.gap_since).where(and_(
                c.destination == self.destination, c.stream == stream))).first()
            if row is not None and row[0] == seq and row[1] is not None:
                return _utc(row[1]) or _now()
            now = _now()
            conn.execute(update(cursors_t).where(and_(
                c.destination == self.destination, c.stream == stream)).values(
                gap_seq=seq, gap_since=now))
            return now

    def set_start(self, positions: dict[str, int], *, reset: bool = False) -> None:
        """Set the cursors of streams (``reset``: replace every cursor of this
        destination, e.g. ``--from-start``); others are kept."""
        c = cursors_t.c
        with self.engine.begin() as conn:
            if reset:
                conn.execute(delete(cursors_t).where(and_(
                    c.destination == self.destination, c.stream != DESTINATION_ROW)))
            for stream, seq in positions.items():
                self._ensure_row(conn, stream, seq)
                conn.execute(update(cursors_t).where(and_(
                    c.destination == self.destination, c.stream == stream)).values(
                    seq=seq, updated_at=_now()))

    def note_error(self, message: str) -> None:
        """Keep the last error for ``--status`` (never raises: health is best effort)."""
        c = cursors_t.c
        try:
            with self.engine.begin() as conn:
                self._ensure_row(conn, DESTINATION_ROW)
                conn.execute(update(cursors_t).where(and_(
                    c.destination == self.destination, c.stream == DESTINATION_ROW)).values(
                    last_error=message[:2000], last_error_at=_now()))
        except Exception:  # the store itself may be what fails
            pass


def destination_states(engine: Engine) -> list[DestinationState]:
    """Every destination known to the store, for ``forward --status``."""
    states: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for row in conn.execute(select(cursors_t)).mappings():
            state = states.setdefault(row["destination"], {
                "destination": row["destination"], "cursors": {}, "holder": None,
                "lease_until": None, "last_success": None, "last_error": None,
                "last_error_at": None, "rejected": 0})
            if row["stream"] == DESTINATION_ROW:
                state.update(holder=row["holder"], lease_until=_utc(row["lease_until"]),
                             last_success=_utc(row["last_success"]),
                             last_error=row["last_error"],
                             last_error_at=_utc(row["last_error_at"]))
            else:
                state["cursors"][row["stream"]] = int(row["seq"])
        for name, count in conn.execute(select(rejects_t.c.destination, func.count())
                                        .group_by(rejects_t.c.destination)):
            if name in states:
                states[name]["rejected"] = int(count)
    return [DestinationState(**s) for _, s in sorted(states.items())]


def _dead_local(holder: str) -> bool:
    """Whether ``holder`` names a process of this host that no longer runs."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # another forwarder in this process is alive by definition
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def item_reject(item: ForwardItem, reason: str) -> Reject:
    """The reject row of one refused record."""
    return Reject(item.stream, item.seq, item.record.id, reason[:2000])
