"""``AuditLogHandler``: audit records from ordinary Python logging calls.

::

    log.info("tool %s deleted", tid, extra={"audit": {"action": "DELETE",
             "resource_type": "tool", "resource_id": tid, "user_id": user}})

Only records carrying the ``audit`` key become audit records, so the handler can sit on
the root logger. On the caller's thread the trace and span IDs are those of the thread
(or task) that logged. Behind a ``QueueHandler`` the handler runs on the listener's
thread: put :class:`~otel_audit.integrations.log_context.AuditContextFilter` on the
``QueueHandler`` and the handler takes the trace, correlation and request context,
time, message and exception stamped at the call instead (a record without the stamp
behaves as above). It never captures the library's own logger, anything logged while
otel_audit works (:func:`~otel_audit._internal.is_suppressed`), or itself (a
context-local re-entrancy guard).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from .._internal import is_suppressed, log_internal_error
from ..context import _correlation_id, _request_context
from ..fields import CALLER_FIELDS
from ..record import AuditRecord
from ..trail import AuditTrail, get_trail
from .log_context import CallContext, call_context

__all__ = ["AUDIT_FIELDS", "AuditLogHandler"]

#: Keys accepted in ``extra={"audit": {...}}``: the fields a caller sets
#: (otel_audit.fields), the action, and ``log_action``'s two aliases of ``context``.
AUDIT_FIELDS = CALLER_FIELDS | {"action", "details", "metadata"}

_LIBRARY_LOGGER = "otel_audit"
_in_handler: ContextVar[bool] = ContextVar("otel_audit_in_log_handler", default=False)
_UTC = dt.UTC
_from_timestamp = dt.datetime.fromtimestamp
# the listener thread's own span must not stand in for a call made outside any span
_NO_SPAN = trace.set_span_in_context(trace.INVALID_SPAN)


class AuditLogHandler(logging.Handler):
    """A :class:`logging.Handler` that records ``extra={"audit": {...}}`` log records.

    ``AuditLogHandler(level=NOTSET, *, trail=None, key="audit")``: writes to ``trail``
    or, when ``None``, the default trail (:func:`otel_audit.get_trail`, looked up per
    record). Works from ``logging.config.dictConfig`` as
    ``{"class": "otel_audit.AuditLogHandler"}``.

    The formatted message goes to ``context["message"]``, the logger name and level to
    ``context["logger"]`` / ``context["level"]``; ``details``/``metadata`` are kept
    under ``context`` as the compatibility service does. ``exc_info`` sets
    ``success=False`` and ``error_message`` unless the audit dict says otherwise.
    Override :meth:`audit_fields` to change the mapping.
    """

    def __init__(self, level: int | str = logging.NOTSET, *, trail: AuditTrail | None = None,
                 key: str = "audit") -> None:
        super().__init__(level)
        self.trail = trail
        self.key = key

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and emit without the handler lock: emission only queues a record."""
        result: object = self.filter(record)
        if isinstance(result, logging.LogRecord):  # Python 3.12+: filters may replace it
            record = result
        if result:
            self.emit(record)
        return bool(result)

    def emit(self, record: logging.LogRecord) -> None:
        """Record ``record`` if it carries the audit key; never raises."""
        audit = record.__dict__.get(self.key)
        if audit is None:
            return
        name = record.name
        if name == _LIBRARY_LOGGER or name.startswith("otel_audit."):
            return
        if _in_handler.get() or is_suppressed():
            return
        token = _in_handler.set(True)
        try:
            trail = self.trail if self.trail is not None else get_trail()
            if not trail.enabled:
                return
            stamp = call_context(record)
            if stamp is not None and stamp.key == self.key:
                audit = stamp.audit  # the value as it was at the call
            fields = self.audit_fields(record, audit)
            action = str(fields.pop("action", None) or "LOG")
            if stamp is None:
                rec = trail.build_record(action, **fields)
                trail.submit(rec)
                trail.link_to_span(rec)
            else:
                trail.submit(_build_stamped(trail, stamp, action, fields))
        except Exception:  # a logging call must never fail because of auditing
            log_internal_error("log_handler", logging.ERROR,
                               "could not record audit entry from log record %s:%s",
                               record.name, record.lineno, exc_info=True)
        finally:
            _in_handler.reset(token)

    def audit_fields(self, record: logging.LogRecord, audit: Any) -> dict[str, Any]:
        """Return ``build_record`` keyword arguments for ``record`` (``action`` included)."""
        if not isinstance(audit, Mapping):
            audit = {"action": str(audit)}
        fields: dict[str, Any] = {}
        context: dict[str, Any] = {}
        for key, value in audit.items():
            if key in ("details", "metadata"):
                context[key] = value
            elif key == "context":
                if isinstance(value, Mapping):
                    context.update(value)
                elif value is not None:
                    context["context"] = value
            elif key in AUDIT_FIELDS:
                fields[key] = value
            else:  # unknown keys are kept, not lost, and not passed as keywords
                context.setdefault("extra", {})[str(key)] = value
        stamp = call_context(record)
        context.setdefault("message", stamp.message if stamp is not None
                           else self._message(record))
        context.setdefault("logger", record.name)
        context.setdefault("level", record.levelname)
        fields["context"] = context
        error = None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            error = f"{type(exc).__name__}: {exc}"
        elif stamp is not None:  # QueueHandler.prepare() drops exc_info; the stamp has it
            error = stamp.error
        if error is not None:
            fields.setdefault("success", False)
            if fields.get("error_message") is None:
                fields["error_message"] = error
        fields["timestamp"] = _from_timestamp(
            stamp.time if stamp is not None else record.created, _UTC)
        return fields

    @staticmethod
    def _message(record: logging.LogRecord) -> str:
        try:
            return record.getMessage()
        except Exception:  # bad %-args: keep the template rather than lose the audit
            return str(record.msg)


def _build_stamped(trail: AuditTrail, stamp: CallContext, action: str,
                   fields: dict[str, Any]) -> AuditRecord:
    """Build the record in the context stamped at the log call, not this thread's.

    The request and correlation context are set for the build (so the request's
    facts fill what the audit dict leaves out, as on the caller's thread) and reset
    after it; the trace IDs are passed explicitly.
    """
    req_token = _request_context.set(stamp.request)
    cid_token = _correlation_id.set(stamp.correlation_id)
    otel_token = None
    try:
        if stamp.trace_id is not None:
            fields.setdefault("trace_id", stamp.trace_id)
            fields.setdefault("span_id", stamp.span_id)
        else:
            otel_token = otel_context.attach(_NO_SPAN)
        rec = trail.build_record(action, **fields)
    finally:
        if otel_token is not None:
            otel_context.detach(otel_token)
        _correlation_id.reset(cid_token)
        _request_context.reset(req_token)
    if stamp.record_id is not None and rec.trace_id == stamp.trace_id:
        # the span already points at this ID (linked at the call)
        rec = rec._replace(id=stamp.record_id)
    return rec
