"""Builders of OTLP log requests for the ingest server tests."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otel_audit.server import IngestApp, serve_in_thread

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"


def any_value(value: Any) -> AnyValue:
    """Build an OTLP AnyValue from a Python value (the inverse of the server's decoder)."""
    if value is None:
        return AnyValue()  # the empty AnyValue
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(KeyValue(key=k, value=any_value(v))
                                       for k, v in value.items())
        return out
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(any_value(v) for v in value)
        return out
    return AnyValue(string_value=str(value))


def log_request(
    logs: list[dict[str, Any]],
    *,
    service_name: str | None = "billing",
) -> ExportLogsServiceRequest:
    """An ExportLogsServiceRequest with one resource and one scope holding ``logs``.

    Each dict may carry ``attributes``, ``event_name``, ``body``, ``trace_id``/``span_id``
    (hex) and ``time_unix_nano``.
    """
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    if service_name is not None:
        resource_logs.resource.attributes.append(
            KeyValue(key="service.name", value=any_value(service_name)))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "tests"
    for i, spec in enumerate(logs):
        log = scope_logs.log_records.add()
        log.time_unix_nano = spec.get("time_unix_nano", 1_700_000_000_000_000_000 + i * 1000)
        if "event_name" in spec:
            log.event_name = spec["event_name"]
        if "body" in spec:
            log.body.CopyFrom(any_value(spec["body"]))
        for key, value in spec.get("attributes", {}).items():
            log.attributes.append(KeyValue(key=key, value=any_value(value)))
        if spec.get("trace_id"):
            log.trace_id = bytes.fromhex(spec["trace_id"])
        if spec.get("span_id"):
            log.span_id = bytes.fromhex(spec["span_id"])
    return request


def audit_logs(n: int, *, trace_id: str = TRACE_ID, span_id: str = SPAN_ID,
               action: str = "UPDATE") -> list[dict[str, Any]]:
    """``n`` audit log record specs on one trace."""
    return [{"event_name": "audit", "trace_id": trace_id, "span_id": span_id,
             "attributes": {"audit.action": action, "user.id": f"user-{i}",
                            "audit.resource.type": "invoice",
                            "audit.resource.id": f"inv-{i}"}}
            for i in range(n)]


def protobuf_body(request: ExportLogsServiceRequest, *, compress: bool = True) -> bytes:
    """Serialized (and by default gzip-compressed) request body."""
    raw = request.SerializeToString()
    return gzip.compress(raw) if compress else raw


PROTOBUF_GZIP = {"content-type": "application/x-protobuf", "content-encoding": "gzip"}



@contextmanager
def running(app: IngestApp) -> Iterator[httpx.Client]:
    """Serve ``app`` on an ephemeral loopback port; yields a client bound to it."""
    with serve_in_thread(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as c:
        yield c
