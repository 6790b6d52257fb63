"""Back-links from traces to audit rows: the ``audit`` span event with ``audit.record_id``.

Every audit row stores the trace and span IDs current when it was made, so rows join
to traces. The other direction is a span event named ``audit`` carrying
``audit.record_id``, added on the caller's thread while the span is still open (an
ended span is immutable). A span event is the most expensive step of a record made
inside a recording span (the SDK builds bounded attributes and takes the span's lock),
so the trail's ``span_backlink`` setting chooses how many a span gets:

``first`` (default)
    one event per span, for the first record made in it: the trace points at its audit
    rows, and the span's ``trace_id``/``span_id`` (stored with every row) select all of
    them (``trail.records(trace_id=...)``, the ``trace_timeline`` report).
``event``
    one event per record (a span keeps at most its span limits' number of events).
``off``
    no events; rows still carry the trace and span IDs.

Which spans already have their link is remembered by span ID in a small table shared by
all threads, cleared when it fills up: a span whose entry was cleared, or two threads
racing on one span, get one more event, never fewer than one.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace

from .config import SPAN_BACKLINKS
from .context import current_trace_ids
from .mapping import AUDIT_EVENT_NAME

__all__ = ["RECORD_ID_ATTRIBUTE", "SpanLinker", "link_every", "link_first", "linker"]

#: The event attribute holding the audit row's ID.
RECORD_ID_ATTRIBUTE = "audit.record_id"

#: ``linker(record_id, trace_id, span_id)``: link the current span if it is the record's.
SpanLinker = Callable[[str, str, str], None]

_get_current_span = trace.get_current_span
# span ID -> trace ID of the spans that have their first link; bounded so that spans
# never seen again cost nothing for long (an entry is two short strings)
_linked: dict[str, str] = {}
_LINKED_MAX = 1024


def _link_current(record_id: str, trace_id: str, span_id: str) -> bool:
    """Add the ``audit`` event to the current span if it is the record's span and is
    recording; return whether the current span is the record's (a record with explicit
    IDs, or one handed to another thread, links nothing and marks nothing)."""
    if current_trace_ids() != (trace_id, span_id):
        return False
    span = _get_current_span()
    if span.is_recording():
        span.add_event(AUDIT_EVENT_NAME, {RECORD_ID_ATTRIBUTE: record_id})
    return True


def link_every(record_id: str, trace_id: str, span_id: str) -> None:
    """``event``: one back-link event per record."""
    _link_current(record_id, trace_id, span_id)


def link_first(record_id: str, trace_id: str, span_id: str) -> None:
    """``first``: a back-link event for the first record of a span only."""
    if _linked.get(span_id) == trace_id:
        return  # this span already points at its rows: one dict lookup per record
    if not _link_current(record_id, trace_id, span_id):
        return
    # remembered whether or not the span records: a span never starts recording again
    if len(_linked) >= _LINKED_MAX:
        _linked.clear()
    _linked[span_id] = trace_id


def linker(mode: str) -> SpanLinker | None:
    """The back-link function of a ``span_backlink`` mode (``None`` for ``off``)."""
    if mode == "off":
        return None
    if mode == "event":
        return link_every
    if mode == "first":
        return link_first
    raise ValueError(f"span_backlink must be one of {', '.join(SPAN_BACKLINKS)}; got {mode!r}")
