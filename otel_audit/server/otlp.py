"""OTLP/HTTP logs wire format: request decoding, AnyValue conversion, response encoding.

Accepts exactly what the OpenTelemetry SDK exporters and the Collector's ``otlphttp``
exporter send: ``application/x-protobuf`` or ``application/json`` bodies, optionally
``gzip``/``deflate`` compressed. Decompression is bounded so a small compressed body
cannot expand past the configured limit.

OTLP/JSON differs from the protobuf JSON mapping in one place that matters here:
``traceId`` and ``spanId`` are hex strings, not base64 (OTLP specification, "JSON
Protobuf Encoding"); they are rewritten before ``json_format`` parses the document.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, cast

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

_decode_logs: Callable[[bytes], Any] | None
try:
    from .._accel import otlp_decode_logs as _decode_logs
except ImportError:  # not built, or the pure-Python path forced
    _decode_logs = None

__all__ = [
    "JSON",
    "PROTOBUF",
    "BadRequest",
    "LogEntry",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "any_value",
    "attributes",
    "decode_request",
    "encode_response",
    "encode_status",
    "hex_id",
    "iter_log_entries",
    "log_entry",
    "log_fields",
    "media_type",
    "python_log_fields",
    "trace_ids",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})
_GZIP_MAGIC = b"\x1f\x8b"


class BadRequest(ValueError):
    """The body is not a valid ``ExportLogsServiceRequest`` (HTTP 400)."""


class PayloadTooLarge(ValueError):
    """The body, compressed or not, is larger than the configured limit (HTTP 413)."""


class UnsupportedMediaType(ValueError):
    """Content type or content encoding this receiver does not speak (HTTP 415)."""


def media_type(content_type: str | None) -> str:
    """Return the request's OTLP media type, or raise :class:`UnsupportedMediaType`."""
    value = (content_type or "").split(";", 1)[0].strip().lower()
    if value not in (PROTOBUF, JSON):
        raise UnsupportedMediaType(
            f"content type {value or '(none)'!r} is not supported; "
            f"send {PROTOBUF} or {JSON}"
        )
    return value


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` without ever producing more than ``limit`` bytes.

    A gzip body may hold several members one after the other (RFC 1952, 2.2): every
    member is decoded and the outputs joined, as ``gunzip`` and Go's gzip reader do.
    Anything after the last member (or after a deflate stream) that is not another
    member is an error, never silently dropped with the records it might hold. The
    limit applies to the total decompressed size, so a small body cannot expand
    past it (a decompression bomb answers 413).
    """
    enc = (encoding or "").strip().lower()
    if enc not in _ENCODINGS:
        raise UnsupportedMediaType(f"content encoding {enc!r} is not supported (use gzip)")
    if enc in ("", "identity"):
        if len(body) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        return body
    gzip_container = "gzip" in enc
    parts: list[bytes] = []
    size = 0
    rest = body
    members = 0
    while True:
        # wbits 31: gzip container; 15: zlib container, which is what HTTP "deflate" means
        decoder = zlib.decompressobj(31 if gzip_container else 15)
        try:
            # at most one byte more than the limit allows: enough to know it is exceeded
            data = decoder.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            where = f" (member {members + 1})" if members else ""
            raise BadRequest(f"body is not valid {enc} data{where}: {exc}") from exc
        size += len(data)
        if size > limit or decoder.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
        if not decoder.eof:
            raise BadRequest(f"truncated {enc} body")
        parts.append(data)
        members += 1
        rest = decoder.unused_data
        if not rest:
            return b"".join(parts)
        if not gzip_container or rest[:2] != _GZIP_MAGIC:
            raise BadRequest(f"{len(rest)} byte(s) of trailing data after the {enc} "
                             f"stream (member {members})")


def _hex_ids_to_base64(document: Any) -> None:
    """Rewrite OTLP/JSON hex trace/span IDs into the base64 ``json_format`` expects."""
    if not isinstance(document, dict):
        raise BadRequest("OTLP/JSON body must be an object")
    for resource_logs in _list(document, "resourceLogs", "resource_logs"):
        for scope_logs in _list(resource_logs, "scopeLogs", "scope_logs"):
            for log_record in _list(scope_logs, "logRecords", "log_records"):
                if not isinstance(log_record, dict):
                    continue
                for key in ("traceId", "trace_id", "spanId", "span_id"):
                    value = log_record.get(key)
                    if isinstance(value, str) and value:
                        try:
                            raw = bytes.fromhex(value)
                        except ValueError as exc:
                            raise BadRequest(f"{key} {value!r} is not hex") from exc
                        log_record[key] = base64.b64encode(raw).decode("ascii")


def _list(obj: Any, camel: str, snake: str) -> list[Any]:
    if not isinstance(obj, dict):
        return []
    value = obj.get(camel, obj.get(snake))
    return value if isinstance(value, list) else []


def decode_request(body: bytes, media: str) -> ExportLogsServiceRequest:
    """Parse a decompressed body of type ``media`` into an ``ExportLogsServiceRequest``."""
    request = ExportLogsServiceRequest()
    if media == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError) as exc:
            raise BadRequest(f"body is not a valid ExportLogsServiceRequest: {exc}") from exc
        return request
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    _hex_ids_to_base64(document)
    try:
        # the OTLP specification requires receivers to ignore unknown JSON fields
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise BadRequest(f"body is not a valid OTLP/JSON logs request: {exc}") from exc
    return request


def _encode(message: Message, media: str) -> bytes:
    if media == JSON:
        return str(json_format.MessageToJson(message, indent=None)).encode("utf-8")
    return bytes(message.SerializeToString())


def encode_response(rejected: int, message: str, media: str) -> bytes:
    """Encode an ``ExportLogsServiceResponse`` (with ``partial_success`` when rejecting)."""
    response = ExportLogsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = message
    return _encode(response, media)


def encode_status(code: int, message: str, media: str) -> bytes:
    """Encode the ``google.rpc.Status`` body OTLP/HTTP prescribes for error responses."""
    return _encode(status_pb2.Status(code=code, message=message), media)


# ----------------------------------------------------------------------- values


def any_value(value: AnyValue) -> Any:
    """Convert an OTLP ``AnyValue`` into the equivalent Python value (recursively)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "bytes_value":
        # stored as text: base64 is how OTLP/JSON spells bytes
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    """Convert repeated ``KeyValue`` into a ``dict`` (a later duplicate key wins)."""
    out: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        value = pair.value
        # strings are nearly every attribute: read them without the generic dispatch
        if value.WhichOneof("value") == "string_value":
            out[pair.key] = value.string_value
        else:
            out[pair.key] = any_value(value)
    return out


class LogEntry(NamedTuple):
    """One log record of a request with its resource attributes and a stable digest."""

    log: LogRecord
    resource: Mapping[str, Any]
    #: SHA-256 over the record's resource and scope, to be continued with the record
    scope_hash: Any

    @property
    def digest(self) -> bytes:
        """SHA-256 of the record with its resource and scope (computed when asked: a
        record carrying its own ID never needs it)."""
        digest = self.scope_hash.copy()
        digest.update(self.log.SerializeToString(deterministic=True))
        return bytes(digest.digest())


def hex_id(raw: bytes) -> str | None:
    """A trace or span ID as lowercase hex, ``None`` when unset (empty or all zeros)."""
    if not raw or not any(raw):
        return None
    return raw.hex()  # lowercase


_hex_id = hex_id


def iter_log_entries(request: ExportLogsServiceRequest) -> Iterator[LogEntry]:
    """Yield every log record of ``request`` with its resource attributes.

    ``digest`` hashes the record together with its resource and scope, so a batch that
    a Collector or SDK retries yields the same digests again (see ``ingest``).
    """
    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        resource_bytes = resource_logs.resource.SerializeToString(deterministic=True)
        for scope_logs in resource_logs.scope_logs:
            prefix = hashlib.sha256(resource_bytes)
            prefix.update(b"\x00")
            prefix.update(scope_logs.scope.SerializeToString(deterministic=True))
            prefix.update(b"\x00")
            for log in scope_logs.log_records:
                yield LogEntry(log, resource, prefix)


def trace_ids(log: LogRecord) -> tuple[str | None, str | None]:
    """Return the log record's (trace ID, span ID) as lowercase hex, ``None`` when unset."""
    return _hex_id(log.trace_id), _hex_id(log.span_id)


# ------------------------------------------------------------ the records' values

#: A log record's values (:func:`log_fields`): resource attributes, (resource, scope,
#: record) position, attributes, event name, body, time, observed time, trace ID, span ID
LogFields = tuple[dict[str, Any], tuple[int, int, int], dict[str, Any], str, Any, int, int,
                  bytes, bytes]


def python_log_fields(request: ExportLogsServiceRequest) -> list[LogFields]:
    """Every log record of ``request`` as the values the receiver converts: ``(resource
    attributes, (resource, scope, record) position, attributes, event name, body, time,
    observed time, trace ID, span ID)``, attribute values and the body as
    :func:`any_value` converts them (the pure-Python twin of the compiled
    ``otlp_decode_logs``)."""
    out: list[LogFields] = []
    for ri, resource_logs in enumerate(request.resource_logs):
        resource = attributes(resource_logs.resource.attributes)
        for si, scope_logs in enumerate(resource_logs.scope_logs):
            for li, log in enumerate(scope_logs.log_records):
                out.append((resource, (ri, si, li), attributes(log.attributes),
                            log.event_name, any_value(log.body), log.time_unix_nano,
                            log.observed_time_unix_nano, log.trace_id, log.span_id))
    return out


def log_fields(request: ExportLogsServiceRequest, payload: bytes | None = None
               ) -> list[LogFields]:
    """:func:`python_log_fields` of ``request``, read from ``payload`` (the bytes
    ``request`` was parsed from) by the compiled decoder when it is built: the same
    values without a Python object per attribute. A payload it does not handle (a
    field given twice, which the protobuf runtime merges) is read from ``request``."""
    if payload is not None and _decode_logs is not None:
        try:
            fields = _decode_logs(payload)
        except Exception:  # never worse than the parsed message: read that instead
            fields = None
        if fields is not None:
            return cast(list[LogFields], fields)
    return python_log_fields(request)


def log_entry(request: ExportLogsServiceRequest, position: tuple[int, int, int],
              resource: Mapping[str, Any]) -> LogEntry:
    """The :class:`LogEntry` (record, resource, digest) at ``position`` of ``request``."""
    ri, si, li = position
    resource_logs = request.resource_logs[ri]
    scope_logs = resource_logs.scope_logs[si]
    prefix = hashlib.sha256(resource_logs.resource.SerializeToString(deterministic=True))
    prefix.update(b"\x00")
    prefix.update(scope_logs.scope.SerializeToString(deterministic=True))
    prefix.update(b"\x00")
    return LogEntry(scope_logs.log_records[li], resource, prefix)
