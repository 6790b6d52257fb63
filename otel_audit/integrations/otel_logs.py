"""The OpenTelemetry Logs SDK in both directions.

* :class:`AuditLogRecordProcessor` — log records whose event name is ``audit`` (or that
  carry ``audit.action``) become audit records; every other record is left alone, so
  it can sit beside the usual OTLP export processor.
* :class:`OtelLogEmitter` — the trail's ``on_written`` hook behind
  ``emit_otel_logs=True`` (defined in :mod:`otel_audit.integrations.otel_emit`, which
  the trail imports without importing this module).
"""

from __future__ import annotations

from opentelemetry.sdk._logs import LogRecordProcessor, ReadWriteLogRecord

from .._internal import is_suppressed
from ..mapping import AUDIT_EVENT_NAME, attributes_to_fields, is_audit
from ..trail import AuditTrail
from ._convert import resolve_trail, submit_fields
from .otel_emit import OtelLogEmitter

__all__ = ["AuditLogRecordProcessor", "OtelLogEmitter"]

_RECORD_ID = "audit.record_id"


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
