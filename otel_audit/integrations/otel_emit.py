"""Committed audit records out as OpenTelemetry log records (``emit_otel_logs=True``).

:class:`OtelLogEmitter` is the trail's ``on_written`` hook: each committed record (already
normalised, and redacted when redaction is configured) is emitted as a log record with
event name ``audit``, on the trail's store thread, never on the caller's. It needs nothing
from the trail, so the trail can install it without an import cycle; records coming *in*
from the Logs SDK are :mod:`otel_audit.integrations.otel_logs`'s job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger
from opentelemetry.trace import NonRecordingSpan, SpanContext, set_span_in_context

from ..mapping import AUDIT_EVENT_NAME, record_to_attributes
from ..record import AuditRecord

if TYPE_CHECKING:
    from ..prepared import PreparedRecord

__all__ = ["OtelLogEmitter"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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
