"""OTLP/HTTP ingest: ``otel-audit serve`` receives audit log records from many services.

Needs the ``server`` extra (Starlette, uvicorn, opentelemetry-proto)::

    from otel_audit import AuditTrail
    from otel_audit.server import IngestApp, serve_in_thread

    app = IngestApp(AuditTrail("postgresql://audit@db/audit"), token="s3cret")
    with serve_in_thread(app, port=4318) as base_url:
        ...   # exporters send to f"{base_url}/v1/logs"
"""

from __future__ import annotations

from .app import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    IngestApp,
    IngestStats,
    default_ack_mode,
)
from .ingest import RECORD_ID_ATTRIBUTE, IngestBatch, records_from_request
from .runner import (
    TOKEN_ENV,
    build_server,
    check_exposure,
    check_tls,
    is_loopback,
    resolve_token,
    serve_in_thread,
)

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "RECORD_ID_ATTRIBUTE",
    "TOKEN_ENV",
    "IngestApp",
    "IngestBatch",
    "IngestStats",
    "build_server",
    "check_exposure",
    "check_tls",
    "default_ack_mode",
    "is_loopback",
    "records_from_request",
    "resolve_token",
    "serve_in_thread",
]
