"""OpenTelemetry integration: span processor, sampler and Logs SDK processor.

::

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from otel_audit.otel import AuditSampler, AuditSpanProcessor

    provider = TracerProvider(sampler=AuditSampler(ParentBased(TraceIdRatioBased(0.01))))
    provider.add_span_processor(AuditSpanProcessor())      # writes to otel_audit.get_trail()

    with tracer.start_as_current_span("delete tool", attributes={
            "audit.action": "DELETE", "audit.resource.type": "tool",
            "audit.resource.id": "t-1", "user.id": "alice"}):
        ...

The attribute mapping is documented in :mod:`otel_audit.mapping` and
``docs/attribute-mapping.md``.
"""

from __future__ import annotations

from .integrations.otel_logs import AuditLogRecordProcessor, OtelLogEmitter
from .integrations.spans import AuditSampler, AuditSpanProcessor

__all__ = ["AuditLogRecordProcessor", "AuditSampler", "AuditSpanProcessor", "OtelLogEmitter"]
