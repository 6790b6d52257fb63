"""OTLP/HTTP logs sender: audit records as OTLP log records (protobuf, gzip).

Each record becomes one log record with event name ``audit``, its time, trace and span
IDs, and the attributes of :func:`otel_audit.mapping.record_to_attributes` (so
``audit.record_id`` carries the ID); records are grouped by ``service_name`` into one
resource each (``service.name``). An ``otel-audit serve`` receiving them stores the same
records under the same IDs; a Collector routes them like any audit log record.

:class:`OtlpAuditExporter` is an :class:`~otel_audit.exporters.AuditExporter`, so a
trail can send to OTLP in-process (``AuditTrail(exporter=OtlpAuditExporter(url))``: the
pipeline's retries, spool and quarantine apply), and it has the forwarder's
:meth:`~OtlpAuditExporter.send`, which raises instead of answering a result so the
forwarder decides about retries and rejects.

Headers come as the OpenTelemetry exporters take them: ``OTEL_EXPORTER_OTLP_HEADERS``
and ``OTEL_EXPORTER_OTLP_LOGS_HEADERS`` (``name=value,...``, values URL-encoded), then
the ones given (``--header NAME=VALUE``), later ones winning.
"""

from __future__ import annotations

import email.utils
import functools
import gzip
import http.client
import json
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from ..exporters.base import AuditExporter, ExportResult
from ..fields import JSON_FIELDS
from ..mapping import AUDIT_EVENT_NAME, FIELD_ATTRIBUTES, record_to_attributes
from ..prepared import PreparedRecord
from ..record import AuditRecord
from .errors import PermanentError, RetryableError
from .items import ForwardItem, RawJSON

_encode_logs: Callable[..., bytes] | None
try:
    from .._accel import otlp_encode_logs as _encode_logs
except ImportError:  # not built, or the pure-Python path forced
    _encode_logs = None

__all__ = ["OtlpAuditExporter", "encode_request", "parse_headers", "serialize_request"]

#: Attribute carrying the record's ID (``record_to_attributes``)
RECORD_ID_ATTRIBUTE = "audit.record_id"

_SCOPE_NAME = "otel_audit.forward"
_SEVERITY_INFO, _SEVERITY_WARN = 9, 13
_RETRYABLE = frozenset({408, 429})


def parse_headers(text: str | None) -> dict[str, str]:
    """``name=value,name2=value2`` (values URL-encoded) as OTEL_EXPORTER_OTLP_HEADERS."""
    headers: dict[str, str] = {}
    for part in (text or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            headers[unquote(name.strip()).lower()] = unquote(value.strip())
    return headers


def _set_value(target: AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        target.string_value = str(value)


def _fill_log_record(log: LogRecord, record: AuditRecord) -> None:
    # filled in place: building KeyValue/AnyValue objects and copying them into the
    # request costs several times more per record (each constructor copies)
    time_ns = (int(record.timestamp.timestamp()) * 1_000_000
               + record.timestamp.microsecond) * 1000
    log.time_unix_nano = time_ns
    log.observed_time_unix_nano = time_ns
    log.severity_number = _SEVERITY_INFO if record.success else _SEVERITY_WARN  # type: ignore[assignment]
    log.severity_text = "INFO" if record.success else "WARN"
    log.body.string_value = record.action
    log.event_name = AUDIT_EVENT_NAME
    add = log.attributes.add
    for key, value in record_to_attributes(record).items():
        _set_value(add(key=key).value, value)
    if record.trace_id:
        try:
            log.trace_id = bytes.fromhex(record.trace_id)
            if record.span_id:
                log.span_id = bytes.fromhex(record.span_id)
        except ValueError:  # not hex: the record keeps it as it is in its attributes
            pass


def encode_request(records: Sequence[AuditRecord]) -> ExportLogsServiceRequest:
    """One OTLP logs request holding ``records``, one resource per service name."""
    by_service: dict[str | None, list[AuditRecord]] = {}
    for record in records:
        by_service.setdefault(record.service_name, []).append(record)
    request = ExportLogsServiceRequest()
    for service, group in by_service.items():
        resource_logs = request.resource_logs.add()
        if service is not None:
            resource_logs.resource.attributes.add(key="service.name").value.string_value = (
                service)
        scope_logs = resource_logs.scope_logs.add()
        scope_logs.scope.name = _SCOPE_NAME
        add = scope_logs.log_records.add
        for record in group:
            _fill_log_record(add(), record)
    return request


_dumps = functools.partial(json.dumps, default=str, separators=(",", ":"))


def _json_text(value: Any) -> str:
    """A JSON field as ``record_to_attributes`` writes it (compact, ``str`` of the
    unknown), or the stored text of one read as :class:`RawJSON`, as it is."""
    if type(value) is RawJSON:
        return str(value)
    return str(_dumps(value))


def _parsed(records: Sequence[AuditRecord]) -> Sequence[AuditRecord]:
    """``records`` with the JSON fields read as :class:`RawJSON` parsed (what reading
    them without ``raw_json`` gives)."""
    out = []
    for record in records:
        raw = {name: json.loads(value) for name in JSON_FIELDS
               if type(value := getattr(record, name)) is RawJSON}
        out.append(record._replace(**raw) if raw else record)
    return out

_RECORD_FIELDS = AuditRecord._fields


def _attribute_plan() -> tuple[tuple[int, str, int], ...] | None:
    """``record_to_attributes`` as ``(field position, attribute, kind)`` for the compiled
    encoder (kind 2: always, 1: JSON text unless ``None``, 0: the value unless ``None``);
    ``None`` when the mapping has a shape it does not cover."""
    plan = [(_RECORD_FIELDS.index("id"), RECORD_ID_ATTRIBUTE, 2)]
    for field, names in FIELD_ATTRIBUTES.items():
        if field not in _RECORD_FIELDS:
            return None
        plan.append((_RECORD_FIELDS.index(field), names[0], 1 if field in JSON_FIELDS else 0))
    if len({name for _, name, _ in plan}) != len(plan):
        return None  # two fields on one attribute: the dict keeps the first place
    return tuple(plan)


_PLAN = _attribute_plan()
_POSITIONS = tuple(_RECORD_FIELDS.index(name) for name in (
    "timestamp", "action", "success", "trace_id", "span_id", "service_name"))


def serialize_request(records: Sequence[AuditRecord]) -> bytes:
    """``encode_request(records).SerializeToString()``: the same bytes, written by the
    compiled encoder when it is built (``otel_audit._speedups``, one call per batch
    instead of a message object per field)."""
    if _encode_logs is not None and _PLAN is not None:
        try:
            return bytes(_encode_logs(list(records), _PLAN, _POSITIONS, _SCOPE_NAME,
                                      _json_text))
        except (TypeError, ValueError, OverflowError):
            pass  # a value the encoder does not take: the protobuf runtime decides
    return bytes(encode_request(_parsed(records)).SerializeToString())


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _partial_success(payload: bytes, content_type: str | None) -> tuple[int, str]:
    """``(rejected_log_records, error_message)`` of a protobuf response, else ``(0, "")``."""
    if not payload or "protobuf" not in (content_type or ""):
        return 0, ""
    response = ExportLogsServiceResponse()
    try:
        response.ParseFromString(payload)
    except Exception:  # an odd body on a 2xx: the records were accepted
        return 0, ""
    partial = response.partial_success
    return int(partial.rejected_log_records), partial.error_message


class OtlpAuditExporter(AuditExporter):
    """Send audit records to an OTLP/HTTP logs endpoint (``.../v1/logs``).

    ``endpoint`` is the base URL (``http://host:4318``; ``/v1/logs`` is added unless
    the path already ends with it). Keep-alive connections, one per send in flight.
    """

    def __init__(self, endpoint: str, *, headers: Mapping[str, str] | None = None,
                 timeout: float = 30.0, compression: bool = True,
                 tls: ssl.SSLContext | None = None, name: str | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{endpoint!r} is not an http(s) URL")
        path = parts.path.rstrip("/")
        self.path = path if path.endswith("/v1/logs") else f"{path}/v1/logs"
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.tls = tls
        self.timeout = timeout
        self.compression = compression
        self.name = name or f"otlp+{parts.scheme}://{self.host}:{self.port}{self.path}"
        self.headers = {
            **parse_headers(environ.get("OTEL_EXPORTER_OTLP_HEADERS")),
            **parse_headers(environ.get("OTEL_EXPORTER_OTLP_LOGS_HEADERS")),
            **{k.lower(): v for k, v in (headers or {}).items()},
        }
        # keep-alive connections not in use: each send takes one (or opens one), so
        # several threads may send at once (the forwarder's --parallel)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._shutdown = False
        #: several batches may be in flight at once (one connection each)
        self.concurrent = True
        #: JSON fields may come as their stored text (the compiled encoder sends it as is)
        self.raw_json = _encode_logs is not None and _PLAN is not None

    # -------------------------------------------------------------- the forwarder

    def send(self, items: Sequence[ForwardItem]) -> None:
        """Post ``items``; return when the endpoint answered 2xx, else raise.

        408, 429, 5xx and connection errors raise ``RetryableError`` (with the
        response's ``Retry-After``); any other status ``PermanentError``.
        """
        self.post([item.record for item in items])

    def prepare(self, items: Sequence[ForwardItem]) -> bytes:
        """The request body of ``items`` (the forwarder encodes the next batch while
        the one before is in flight, then hands it to :meth:`send_prepared`)."""
        return self.encode([item.record for item in items])

    def send_prepared(self, items: Sequence[ForwardItem], body: bytes) -> None:
        """:meth:`send` of a body :meth:`prepare` made of ``items``."""
        self._post_body(body)

    def encode(self, records: Sequence[AuditRecord]) -> bytes:
        """The request body of ``records``: serialized, gzipped unless disabled."""
        body = serialize_request(records)
        return gzip.compress(body, compresslevel=1) if self.compression else body

    def post(self, records: Sequence[AuditRecord]) -> None:
        """Post ``records`` once (see :meth:`send`)."""
        self._post_body(self.encode(records))

    def _post_body(self, body: bytes) -> None:
        headers = {**self.headers, "content-type": "application/x-protobuf"}
        if self.compression:
            headers["content-encoding"] = "gzip"
        conn = self._connection()
        try:
            conn.request("POST", self.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise RetryableError(f"{self.name}: {exc or type(exc).__name__}") from exc
        if response.getheader("connection", "").lower() == "close":
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        status = response.status
        if 200 <= status < 300:
            rejected, message = _partial_success(payload, response.getheader("content-type"))
            if rejected:
                # some log records refused: the forwarder narrows the batch down to them
                # (resending the accepted ones is harmless: same record IDs)
                raise PermanentError(f"{self.name}: {rejected} log record(s) refused: "
                                     f"{message}")
            return
        detail = f"{self.name}: HTTP {status} {payload[:300].decode('utf-8', 'replace')}"
        if status in _RETRYABLE or status >= 500:
            raise RetryableError(detail, _retry_after(response.getheader("retry-after")))
        raise PermanentError(detail)

    def _connection(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if self.https:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout,
                context=self.tls or ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ---------------------------------------------------------- exporter contract

    def export(self, batch: Sequence[PreparedRecord]) -> ExportResult:
        """Post ``batch`` once (a trail's pipeline retries, spools and isolates):
        ``retryable`` for a connection error, 408, 429 or 5xx, ``rejected`` for another
        4xx or records refused in ``partial_success``; never raises."""
        if self._shutdown:
            return ExportResult.retryable(f"{self.name}: shut down")
        try:
            self.post([prepared.record for prepared in batch])
        except PermanentError as exc:
            return ExportResult.rejected(exc)
        except Exception as exc:  # an exporter never raises into the pipeline
            return ExportResult.retryable(exc)
        return ExportResult.success()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered: every ``export`` has finished when it returns."""
        return True

    def shutdown(self, timeout_millis: int = 30_000) -> bool:
        """Refuse further exports and close the idle connections."""
        self._shutdown = True
        self.close()
        return True
