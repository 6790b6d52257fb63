"""The forwarder: committed records to one destination, at least once, in order per stream.

One round reads, for every stream, the records after the destination's cursor
(:mod:`~otel_audit.forward.reader`), applies the destination's field policy, sends
them as one batch, and moves the cursor only once the destination acknowledged
(:mod:`~otel_audit.forward.cursors`). A crash between the acknowledgement and the
cursor move sends that batch again (same record IDs); nothing else is sent twice.
While a batch is in flight the next one is read and encoded, and sent only once the one
before is acknowledged and its cursor moved (:meth:`Forwarder._forward_stream`).

* A retryable failure (connection, 408, 429, 5xx) retries the same batch with
  exponential backoff and full jitter, never sooner than ``Retry-After``; the cursor
  waits, so a destination down for a day receives everything once it is back.
* A permanent refusal (another 4xx) of a batch is narrowed down by halves to the
  records refused; each goes to ``audit_forward_rejects`` with the reason, an ERROR
  log and ``otel_audit.forward.rejected``, and the rest flows.
* :meth:`Forwarder.stop` (SIGTERM in the command) lets the batch in flight finish and
  its cursor move, then returns.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy import Engine, and_, func, select
from sqlalchemy.exc import SQLAlchemyError

from ..store.schema import audit_trails
from .cursors import CursorStore, Reject, item_reject
from .destinations import Destination
from .errors import ForwardError, LeaseLostError, PermanentError, SendError
from .items import ForwardItem
from .policy import FieldPolicy
from .reader import RAW_JSON_DIALECTS, StreamBatch, read_after, stream_heads

__all__ = ["ForwardSummary", "Forwarder"]

logger = logging.getLogger("otel_audit.forward")

_lock = threading.Lock()
_instruments: dict[str, Any] = {}
_live: weakref.WeakSet[Forwarder] = weakref.WeakSet()


def _observe_lag(_options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(f.lag_records, {"destination": f.destination.name})
            for f in list(_live)]


def _meters() -> dict[str, Any]:
    with _lock:
        if not _instruments:
            meter = metrics.get_meter("otel_audit")
            _instruments.update(
                sent=meter.create_counter(
                    "otel_audit.forward.sent", unit="{record}",
                    description="records a destination acknowledged"),
                retries=meter.create_counter(
                    "otel_audit.forward.retries", unit="{attempt}",
                    description="failed sends that will be retried"),
                rejected=meter.create_counter(
                    "otel_audit.forward.rejected", unit="{record}",
                    description="records a destination refused for good (see "
                                "audit_forward_rejects)"),
                lag=meter.create_observable_gauge(
                    "otel_audit.forward.lag", callbacks=[_observe_lag], unit="{record}",
                    description="committed records not yet acknowledged by the destination"),
            )
        return _instruments


#: Groups of one stream a round forwards before the next stream gets its turn.
_GROUPS_PER_ROUND = 64


class _Prepared(NamedTuple):
    """A batch as it is sent: the items after the field policy, and the destination's
    encoding of them (``None`` when it encodes in ``send``)."""

    items: Sequence[ForwardItem]
    payload: object


class _InFlight(NamedTuple):
    """A group being sent: its batches and where its stream's cursor goes once acked."""

    future: Future[list[Reject]]
    chunks: list[list[ForwardItem]]
    end: int


class _Stopped(Exception):
    """Stop was asked while a batch waited to be retried: its cursor stays."""


@dataclass
class ForwardSummary:
    """What one :meth:`Forwarder.run` did."""

    sent: int = 0
    rejected: int = 0
    retries: int = 0
    batches: int = 0
    #: ``stream -> first missing seq`` of streams waiting at a gap when the run ended
    gaps: dict[str, int] = field(default_factory=dict)


class Forwarder:
    """Forward the trail in ``engine`` to ``destination`` (see the module docstring)."""

    def __init__(self, engine: Engine, destination: Destination, *,
                 policy: FieldPolicy | None = None, batch_size: int = 500,
                 poll_interval: float = 1.0, gap_grace: float = 600.0,
                 lease_seconds: float = 30.0, backoff_base: float = 0.5,
                 backoff_max: float = 60.0, retry_for: float | None = None,
                 parallel: int = 1,
                 on_batch: Callable[[Sequence[ForwardItem]], None] | None = None) -> None:
        if batch_size < 1 or parallel < 1:
            raise ValueError("batch_size and parallel must be at least 1")
        self.engine = engine
        self.destination = destination
        self.policy = policy or FieldPolicy()
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.gap_grace = gap_grace
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_for = retry_for
        self.on_batch = on_batch
        #: batches in flight at once: ``parallel`` for a destination that takes several
        #: sends at once (OTLP), else 1 (each batch then arrives after the one before)
        self._width = parallel if getattr(destination, "concurrent", False) else 1
        #: JSON fields read as their stored text (:class:`RawJSON`) when the destination
        #: sends them as text anyway and no policy looks into them
        self._raw_json = (bool(getattr(destination, "raw_json", False))
                          and self.policy.is_empty
                          and engine.dialect.name in RAW_JSON_DIALECTS)
        self._pool: ThreadPoolExecutor | None = None
        #: sends each group while the next one is read and encoded (see _forward_stream)
        self._sender: ThreadPoolExecutor | None = None
        self._count_lock = threading.Lock()
        self.store = CursorStore(engine, destination.name, lease_seconds=lease_seconds)
        self.lag_records = 0
        self._stop = threading.Event()
        self._summary = ForwardSummary()
        self._meters = _meters()
        self._attrs = {"destination": destination.name}
        _live.add(self)

    # ----------------------------------------------------------------- control

    def stop(self) -> None:
        """Finish the batch in flight, move its cursor, and return from :meth:`run`."""
        self._stop.set()

    def start_from(self, *, from_start: bool = False, since: dt.datetime | None = None
                   ) -> None:
        """``from_start``: send everything again (every cursor back to 0); ``since``:
        streams without a cursor start at their first record at or after ``since``."""
        if from_start:
            self.store.set_start({}, reset=True)
            return
        if since is None:
            return
        known = self.store.cursors()
        t = audit_trails.c
        positions: dict[str, int] = {}
        with self.engine.connect() as conn:
            for stream, head in stream_heads(conn).items():
                if stream in known:
                    continue
                first = conn.execute(select(func.min(t.seq)).where(and_(
                    t.stream == stream, t.timestamp >= since))).scalar()
                positions[stream] = head if first is None else int(first) - 1
        self.store.set_start(positions)

    # --------------------------------------------------------------------- run

    def run(self, *, once: bool = False) -> ForwardSummary:
        """Forward until :meth:`stop` (``once``: until everything committed now is
        acknowledged, or waits at a gap younger than the grace period)."""
        self._summary = ForwardSummary()
        try:
            self._acquire()
        except _Stopped:
            return self._summary
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="otel-audit-forward-send")
        if self._width > 1:
            self._pool = ThreadPoolExecutor(self._width, thread_name_prefix="otel-audit-forward")
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    progressed = self._round()
                    failures = 0
                except _Stopped:
                    break
                except (SQLAlchemyError, OSError) as exc:
                    # the store is unreachable: nothing moved; try again, not too often
                    failures += 1
                    logger.warning("forwarding to %s: cannot read the store (%s)",
                                   self.destination.name, exc)
                    if self._stop.wait(min(self.backoff_max, self.poll_interval * failures)):
                        break
                    continue
                if once and not progressed:
                    break
                if not progressed:
                    self._stop.wait(self.poll_interval)
                    self.store.renew()
        finally:
            self._sender.shutdown(wait=True)
            self._sender = None
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            try:
                self.store.release()
            except Exception:  # the store may be down; the lease then expires by itself
                logger.warning("could not release the lease of %s", self.destination.name)
        return self._summary

    def _acquire(self) -> None:
        announced = False
        while not self.store.try_acquire():
            if not announced:
                logger.info("another forwarder holds %s; waiting for its lease",
                            self.destination.name)
                announced = True
            if self._stop.wait(min(1.0, self.store.lease_seconds / 3)):
                raise _StoppedWaiting()

    def _round(self) -> bool:
        with self.engine.connect() as conn:
            heads = stream_heads(conn)
        cursors = self.store.cursors()
        self.lag_records = sum(max(0, head - cursors.get(s, 0)) for s, head in heads.items())
        progressed = False
        self._summary.gaps.clear()
        for stream, head in sorted(heads.items()):
            if self._stop.is_set():
                break
            start = cursors.get(stream, 0)
            if head <= start:
                continue
            progressed = self._forward_stream(stream, start) or progressed
        return progressed

    def _forward_stream(self, stream: str, start: int) -> bool:
        """Forward up to ``_GROUPS_PER_ROUND`` groups of ``stream`` after ``start``.

        A group is one batch (``parallel`` batches with a concurrent destination). The
        next group is read and encoded while the one before is in flight, and sent only
        once that one is acknowledged and its cursor moved: still one group in flight,
        in order, but the store read and the encoding no longer wait for the
        destination's answer.
        """
        progressed = False
        flight: _InFlight | None = None
        position = start
        try:
            for _ in range(_GROUPS_PER_ROUND):
                batches = self._read(stream, position)
                chunks = [b.items for b in batches if b.items]
                last = batches[-1]
                prepared = [self._prepare(chunk) for chunk in chunks]
                if flight is not None:
                    previous = flight
                    flight = None  # settled (or failed) here, never again below
                    self._settle(stream, previous)
                    progressed = True
                if self._stop.is_set():
                    break  # what was read stays for the next run (its cursor did not move)
                if chunks:
                    assert self._sender is not None
                    flight = _InFlight(self._sender.submit(self._deliver_group, prepared),
                                       chunks, last.end)
                elif last.end > position:
                    self.store.advance(stream, last.end)  # past noted duplicates only
                    progressed = True
                position = last.end
                if last.gap is not None:
                    if not chunks:
                        progressed = self._at_gap(stream, last.gap) or progressed
                    break
                if len(last.items) < self.batch_size:
                    break  # at the head
            if flight is not None:
                previous = flight
                flight = None
                self._settle(stream, previous)
                progressed = True
        except BaseException:
            if flight is not None:
                # the read of the next group failed (or stop was asked): the group in
                # flight still finishes and moves its cursor when it can
                try:
                    self._settle(stream, flight)
                except Exception:
                    logger.warning("forwarding to %s: a batch in flight of stream %s was "
                                   "not acknowledged; it is sent again",
                                   self.destination.name, stream, exc_info=True)
            raise
        return progressed

    def _settle(self, stream: str, flight: _InFlight) -> None:
        """Wait for the group in flight to be acknowledged, then move its cursor."""
        rejects = flight.future.result()
        self.store.advance(stream, flight.end, rejects)
        count = sum(len(chunk) for chunk in flight.chunks)
        sent = count - len(rejects)
        self._summary.sent += sent
        self._summary.batches += len(flight.chunks)
        self._meters["sent"].add(sent, self._attrs)
        self.lag_records = max(0, self.lag_records - count)

    def _deliver_group(self, group: Sequence[_Prepared]) -> list[Reject]:
        """Deliver a group's batches (at once when the destination takes several)."""
        if len(group) == 1 or self._pool is None:
            return [r for prepared in group for r in self._deliver(prepared)]
        # in flight at once; the cursor moves once all are acknowledged
        return [r for result in self._pool.map(self._deliver, group) for r in result]

    def _read(self, stream: str, start: int) -> list[StreamBatch]:
        """The next batch of ``stream`` (``parallel`` batches with a concurrent
        destination), stopping early at a gap or the head."""
        batches: list[StreamBatch] = []
        with self.engine.connect() as conn:
            while True:
                batch = read_after(conn, stream, batches[-1].end if batches else start,
                                   self.batch_size, raw_json=self._raw_json)
                batches.append(batch)
                if (len(batches) >= self._width or batch.gap is not None
                        or len(batch.items) < self.batch_size):
                    return batches

    def _at_gap(self, stream: str, gap: int) -> bool:
        since = self.store.note_gap(stream, gap)
        waited = (dt.datetime.now(dt.UTC) - since).total_seconds()
        if waited < self.gap_grace:
            self._summary.gaps[stream] = gap
            return False
        t = audit_trails.c
        with self.engine.connect() as conn:
            nxt = conn.execute(select(func.min(t.seq)).where(and_(
                t.stream == stream, t.seq > gap))).scalar()
        if nxt is None:
            return False
        last = int(nxt) - 1
        reason = (f"positions {gap}..{last} of stream {stream} were missing for "
                  f"{waited:.0f}s (grace {self.gap_grace:g}s): skipped")
        logger.error("forwarding to %s: %s", self.destination.name, reason)
        self.store.advance(stream, last, [Reject(stream, gap, "-", reason)])
        self._meters["rejected"].add(last - gap + 1, {**self._attrs, "reason": "gap"})
        return True

    # ---------------------------------------------------------------- delivery

    def _prepare(self, items: Sequence[ForwardItem]) -> _Prepared:
        """The batch as sent: the policy applied, and encoded when the destination can
        encode ahead of sending (``prepare``/``send_prepared``, e.g. OTLP)."""
        if not self.policy.is_empty:
            items = [item._replace(record=self.policy.apply(item.record)) for item in items]
        prepare = getattr(self.destination, "prepare", None)
        return _Prepared(items, None if prepare is None else prepare(items))

    def _deliver(self, prepared: _Prepared) -> list[Reject]:
        rejects = self._send(prepared.items, prepared.payload)
        if self.on_batch is not None:
            self.on_batch(prepared.items)
        return rejects

    def _send(self, items: Sequence[ForwardItem], payload: object = None) -> list[Reject]:
        """Send until acknowledged; narrow a permanent refusal down by halves.

        ``payload``: ``items`` as the destination's ``prepare`` encoded them (sent as
        is, retries included); the halves of a refused batch are encoded again."""
        attempt = 0
        failing_since: float | None = None
        while True:
            try:
                if payload is None:
                    self.destination.send(items)
                else:
                    self.destination.send_prepared(items, payload)  # type: ignore[attr-defined]
                return []
            except PermanentError as exc:
                if len(items) == 1:
                    reason = str(exc)
                    logger.error("forwarding to %s: record %s (stream %s, seq %d) refused "
                                 "for good, recorded in audit_forward_rejects: %s",
                                 self.destination.name, items[0].record.id, items[0].stream,
                                 items[0].seq, reason)
                    with self._count_lock:
                        self._summary.rejected += 1
                    self._meters["rejected"].add(1, {**self._attrs, "reason": "refused"})
                    return [item_reject(items[0], reason)]
                half = len(items) // 2
                return self._send(items[:half]) + self._send(items[half:])
            except Exception as exc:  # retryable, or a failure nobody classified
                if not isinstance(exc, SendError):
                    logger.warning("forwarding to %s: unexpected %s, retrying",
                                   self.destination.name, type(exc).__name__, exc_info=True)
                now = time.monotonic()
                failing_since = failing_since or now
                if self.retry_for is not None and now - failing_since > self.retry_for:
                    raise ForwardError(f"{self.destination.name}: no acknowledgement for "
                                       f"{self.retry_for:g}s: {exc}") from exc
                self.store.note_error(str(exc))
                with self._count_lock:
                    self._summary.retries += 1
                self._meters["retries"].add(1, self._attrs)
                delay = random.uniform(0, min(self.backoff_max,
                                              self.backoff_base * 2 ** min(attempt, 30)))
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None:
                    delay = max(delay, min(float(retry_after), self.backoff_max * 10))
                attempt += 1
                logger.warning("forwarding to %s failed (%s); retry %d in %.1fs",
                               self.destination.name, exc, attempt, delay)
                self._wait(delay)

    def _wait(self, seconds: float) -> None:
        """Wait before a retry, renewing the lease; raise ``_Stopped`` on :meth:`stop`."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._stop.wait(min(left, self.store.lease_seconds / 3)):
                raise _Stopped()
            try:
                self.store.renew()
            except LeaseLostError:
                raise
            except Exception:  # the store is down too: the cursor move checks the lease
                pass


class _StoppedWaiting(_Stopped):
    """Stop was asked while waiting for the lease."""
