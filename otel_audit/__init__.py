"""otel_audit: a compliance-grade audit trail that lives inside OpenTelemetry.

Record who did what to which resource, when, from where and with what outcome; every
record carries the W3C trace ID current when it happened (the correlation ID).
"""

from __future__ import annotations

from .context import RequestContext, correlation_scope, current_correlation_id, request_scope
from .errors import (
    AuditError,
    AuditWriteError,
    ConfigError,
    IntegrityError,
    QueryError,
    QueryRefusedError,
    StoreError,
)
from .integrations.log_context import AuditContextFilter
from .integrations.logging import AuditLogHandler
from .pipeline.batch import AuditStats
from .policy import REVIEW_REQUIRED_ACTIONS, AuditPolicy
from .record import AuditAction, AuditRecord, DataClassification
from .trail import ActionScope, AuditTrail, configure, get_trail, set_trail

__version__ = "0.1.0"

__all__ = [
    "REVIEW_REQUIRED_ACTIONS",
    "ActionScope",
    "AuditAction",
    "AuditContextFilter",
    "AuditError",
    "AuditLogHandler",
    "AuditPolicy",
    "AuditRecord",
    "AuditStats",
    "AuditTrail",
    "AuditWriteError",
    "ConfigError",
    "DataClassification",
    "IntegrityError",
    "QueryError",
    "QueryRefusedError",
    "RequestContext",
    "StoreError",
    "__version__",
    "configure",
    "correlation_scope",
    "current_correlation_id",
    "get_trail",
    "request_scope",
    "set_trail",
]
