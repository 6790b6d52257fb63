"""``AuditContextFilter``: keep a log call's trace and request context behind a queue.

``AuditLogHandler`` reads the trace context of the thread it runs on. Behind a
:class:`logging.handlers.QueueHandler` that is the listener's thread, whose context is
empty, so the record would lose its trace ID, span ID and request facts. This filter
runs where the log call happens (on the ``QueueHandler``, or on a logger) and stamps
the call's context onto the :class:`logging.LogRecord` as one attribute
(:data:`CALL_CONTEXT_ATTR`); the handler prefers it when present. Attributes survive
``QueueHandler.prepare()`` (a shallow copy), and the stamp pickles, so a
multiprocessing queue carries it too.

::

    import logging, queue
    from logging.handlers import QueueHandler, QueueListener
    from otel_audit import AuditContextFilter, AuditLogHandler

    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    to_queue = QueueHandler(q)
    to_queue.addFilter(AuditContextFilter())     # runs on the caller's thread
    listener = QueueListener(q, AuditLogHandler())
    logging.getLogger().addHandler(to_queue)
    listener.start()

Only records carrying the audit key are stamped (others cost one dictionary lookup),
never the library's own logger or records logged while otel_audit works, and the
filter never rejects a record nor raises into the logging call. An audit record whose
``%``-arguments do not fit its message keeps the template as its message (the
arguments are dropped from the record: ``QueueHandler`` would otherwise fail to format
it and drop it).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from opentelemetry import trace
from uuid_utils import uuid7

from .._internal import is_suppressed, log_internal_error
from ..context import RequestContext, _correlation_id, _request_context
from ..mapping import AUDIT_EVENT_NAME
from ..snapshot import copy_plain as _copy_plain

__all__ = ["CALL_CONTEXT_ATTR", "AuditContextFilter", "CallContext", "call_context"]

#: Name of the :class:`logging.LogRecord` attribute holding the :class:`CallContext`.
CALL_CONTEXT_ATTR = "otel_audit_call"

_LIBRARY_LOGGER = "otel_audit"
_get_current_span = trace.get_current_span


class CallContext(NamedTuple):
    """What an audit log call knew on its own thread, stamped onto its record.

    ``trace_id``/``span_id``: the current span (lowercase hex; ``None`` without a valid
    span); ``correlation_id``: the :func:`~otel_audit.correlation_scope` value;
    ``request``: the request context; ``time``: the call's time (``time.time()``
    seconds); ``record_id``: the ID the audit record will have, set when the span was
    recording (the span already points at it); ``key``/``audit``: the audit key and a
    copy of its value as it was at the call; ``message``/``error``: the formatted
    message and the exception (``Type: text``) before a ``QueueHandler`` flattens them.
    """

    trace_id: str | None
    span_id: str | None
    correlation_id: str | None
    request: RequestContext | None
    time: float
    record_id: str | None
    key: str
    audit: Any
    message: str
    error: str | None


def call_context(record: logging.LogRecord) -> CallContext | None:
    """Return the :class:`CallContext` stamped on ``record``, or ``None``."""
    stamp = record.__dict__.get(CALL_CONTEXT_ATTR)
    return stamp if isinstance(stamp, CallContext) else None


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:
        # Bad %-args: keep the template rather than lose the audit. The record's own
        # arguments go too, or QueueHandler.prepare() fails on them and drops it.
        message = str(record.msg)
        record.msg, record.args = message, None
        return message


_CONTAINERS = (dict, list, tuple)


def _copy_at_call(audit: Any) -> Any:
    """The audit dict as it is now: the top level copied, containers in it deep-copied
    (plain JSON data only; anything else is passed on as it is and converted later)."""
    if type(audit) is not dict:
        return audit
    copied = dict(audit)  # one C call; most values are strings that need no copy
    for key, value in copied.items():
        if type(value) in _CONTAINERS:
            copied[key] = _copy_value(value)
    return copied


def _copy_value(value: Any) -> Any:
    try:
        return _copy_plain(value, 1)
    except Exception:  # not plain data: converted by the handler's snapshot
        return value


def _exception_text(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # an exception whose __str__ fails still marks the failure
        return type(exc).__name__


class AuditContextFilter(logging.Filter):
    """A :class:`logging.Filter` that stamps the log call's context onto audit records.

    ``AuditContextFilter(key="audit")``: put it where the call runs -- on a
    ``QueueHandler`` (``handler.addFilter(...)``, or ``"filters": [...]`` of its
    ``dictConfig`` entry) or on a logger -- and :class:`~otel_audit.AuditLogHandler`
    on the listener records the caller's trace ID, span ID, correlation and request
    context, time, message and exception. Never rejects a record; never raises.
    """

    def __init__(self, *, key: str = "audit") -> None:
        super().__init__()  # no logger-name restriction: it stamps, it never rejects
        self.key = key

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp ``record`` when it carries the audit key; always ``True``."""
        attrs = record.__dict__
        audit = attrs.get(self.key)
        if audit is None or CALL_CONTEXT_ATTR in attrs:  # not audit, or stamped upstream
            return True
        name = record.name
        if name == _LIBRARY_LOGGER or name.startswith("otel_audit."):
            return True
        try:
            if is_suppressed():
                return True
            attrs[CALL_CONTEXT_ATTR] = self._stamp(record, audit)
        except Exception:  # a logging call must never fail because of auditing
            log_internal_error("log_context", logging.ERROR,
                               "could not stamp the call context of log record %s:%s",
                               record.name, record.lineno, exc_info=True)
        return True

    def _stamp(self, record: logging.LogRecord, audit: Any) -> CallContext:
        span = _get_current_span()
        ctx = span.get_span_context()
        trace_id = span_id = record_id = None
        if ctx.is_valid:
            trace_id = format(ctx.trace_id, "032x")
            span_id = format(ctx.span_id, "016x")
            if span.is_recording():
                # Link now: by the time the listener runs, the span has usually ended.
                record_id = uuid7().hex
                span.add_event(AUDIT_EVENT_NAME, {"audit.record_id": record_id})
        # the caller may change its dicts once the call returns; the listener runs later
        audit = _copy_at_call(audit)
        error = None
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None:
            error = _exception_text(exc_info[1])
        return CallContext(trace_id, span_id, _correlation_id.get(), _request_context.get(),
                           record.created, record_id, self.key, audit, _message(record),
                           error)
