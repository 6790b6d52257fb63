"""The OpenTelemetry Logs SDK in both directions.

* :class:`AuditLogRecordProcessor` — log records whose event name is ``audit`` (or that
  carry ``audit.action``) become audit records; every other record is left alone, so
  it can sit beside the usual OTLP export processor.
* :class:`OtelLogEmitter` — the trail's ``on_written`` hook behind
  ``emit_otel_logs=True``: each committed record (already normalised, and redacted
  when redaction is configured) is emitted as a log record with event name ``audit``,
  on the trail's store thread, never on the caller's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from opentelemetry import context as otel_context
from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger
from opentelemetry.sdk._logs import LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.trace import NonRecordingSpan, SpanContext, set_span_in_context

from .._internal import is_suppressed
from ..mapping import AUDIT_EVENT_NAME, attributes_to_fields, is_audit, record_to_attributes
from ..prepared import PreparedRecord
from ..record import AuditRecord
from ..trail import AuditTrail
from ._convert import resolve_trail, submit_fields

__all__ = ["AuditLogRecordProcessor", "OtelLogEmitter"]

_RECORD_ID = "audit.record_id"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class AuditLogRecordProcessor(LogRecordProcessor):
    """Record OpenTelemetry log records that are audit entries.

    ``AuditLogRecordProcessor(trail=None)``; register with
    ``logger_provider.add_log_record_processor(...)`` and emit, for example::

        logger.emit(event_name="audit", attributes={"audit.action": "DELETE",
                    "audit.resource.type": "tool", "audit.resource.id": "t-1",
                    "user.id": "alice"})

    Attribute mapping: :mod:`otel_audit.mapping`. A string body goes to
    ``context["message"]``; an ``exception`` gives ``success=False``. Records carrying
    ``audit.record_id`` (emitted by a trail with ``emit_otel_logs=True``) and records
    emitted by otel_audit's own worker are never recorded again.
    """

    def __init__(self, trail: AuditTrail | None = None) -> None:
        self._trail = trail

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        """Submit an audit record for an audit log record; ignore everything else."""
        record = log_record.log_record
        attrs = record.attributes
        if not is_audit(attrs, record.event_name):
            return
        if (attrs and _RECORD_ID in attrs) or is_suppressed():
            return
        resource = log_record.resource.attributes if log_record.resource is not None else None
        fields = attributes_to_fields(attrs, resource)
        if isinstance(record.body, str) and record.body:
            context = fields.get("context")
            if context is None:
                fields["context"] = {"message": record.body}
            elif isinstance(context, dict) and "message" not in context:
                fields["context"] = {**context, "message": record.body}
        if record.exception is not None:
            fields.setdefault("success", False)
            fields.setdefault("error_message",
                              f"{type(record.exception).__name__}: {record.exception}")
        submit_fields(
            resolve_trail(self._trail), fields,
            default_action=record.event_name or AUDIT_EVENT_NAME,
            trace_id=record.trace_id or 0, span_id=record.span_id or 0,
            timestamp_ns=record.timestamp or record.observed_timestamp,
        )

    def shutdown(self) -> None:
        """Flush the trail (the trail itself belongs to the application)."""
        self.force_flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every record submitted so far is committed."""
        return resolve_trail(self._trail).flush(timeout_millis / 1000)


class OtelLogEmitter:
    """``on_written`` hook: emit committed records as OpenTelemetry log records.

    ``OtelLogEmitter(logger_provider=None)`` uses the global provider when none is
    given (resolved lazily by the API's proxy, so it may be set after the trail).
    """

    def __init__(self, logger_provider: LoggerProvider | None = None) -> None:
        self._logger = get_logger("otel_audit", logger_provider=logger_provider)

    def __call__(self, batch: Sequence[PreparedRecord]) -> None:
        """Emit one log record per stored record."""
        logger = self._logger
        for item in batch:
            record = item.record
            logger.emit(
                timestamp=_to_ns(record.timestamp),
                context=_trace_context(record),
                severity_number=SeverityNumber.INFO if record.success else SeverityNumber.WARN,
                severity_text="INFO" if record.success else "WARN",
                body=_summary(record),
                attributes=record_to_attributes(record),
                event_name=AUDIT_EVENT_NAME,
            )


def _to_ns(timestamp: dt.datetime) -> int:
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=dt.UTC)
    delta = timestamp - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _trace_context(record: AuditRecord) -> otel_context.Context:
    """A context whose span is the record's (so the log record carries its trace IDs)."""
    if not record.trace_id:
        return otel_context.Context()
    try:
        span_context = SpanContext(int(record.trace_id, 16), int(record.span_id or "0", 16),
                                   is_remote=False)
    except ValueError:  # not hex (normalised input from elsewhere): emit without IDs
        return otel_context.Context()
    return set_span_in_context(NonRecordingSpan(span_context), otel_context.Context())


def _summary(record: AuditRecord) -> str:
    parts = [record.action, record.resource_type, record.resource_id]
    text = " ".join(p for p in parts if p)
    return f"{text} by {record.user_id}" if record.user_id else text
