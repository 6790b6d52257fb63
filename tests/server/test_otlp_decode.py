"""The compiled OTLP decoder reads exactly the values the parsed message gives.

``otel_audit._speedups.otlp_decode_logs`` (otel_audit/_speedups_otlp.c) is the compiled
twin of ``otlp.python_log_fields``: the same tuple per log record (resource attributes,
position, attributes, event name, body, times, trace and span IDs) from the request's
bytes. What it leaves to the protobuf runtime (a field the runtime merges or keeps the
last of) answers ``None``, and ``log_fields`` then reads the parsed message.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from audit_cases import AUDIT_CASES
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from otlp_helpers import any_value, log_request

from otel_audit import AuditTrail
from otel_audit.server import otlp
from otel_audit.server.ingest import records_from_request

ODD_VALUES: list[Any] = [
    "", "plain", "é ✓ 🚀", True, False, 0, 1, -1, 2**63 - 1, -(2**63), 0.0, -0.0, 1.5,
    math.inf, -math.inf, b"", b"\x00\xffraw", None, [], [1, "a", None, [2.5, {"k": b"x"}]],
    {}, {"a": {"b": {"c": [True, None]}}, "": "empty key"},
]


def _requests() -> dict[str, ExportLogsServiceRequest]:
    requests = {"cases": log_request([log for log, _ in AUDIT_CASES])}
    odd = [{"attributes": {"audit.action": "X", "v": value}} for value in ODD_VALUES]
    odd.append({"attributes": {"audit.action": "Y"}, "body": {"map": [1, 2]}})
    odd.append({"attributes": {"audit.action": "Z"}, "body": b"\x01bytes"})
    odd.append({"event_name": "audit", "body": "LOGIN", "trace_id": "0" * 32})
    odd.append({})
    requests["odd"] = log_request(odd, service_name=None)
    several = ExportLogsServiceRequest()
    for r in range(3):
        resource_logs = several.resource_logs.add()
        resource_logs.resource.attributes.add(key="service.name").value.string_value = f"s{r}"
        resource_logs.resource.attributes.add(key="service.name").value.string_value = f"t{r}"
        resource_logs.schema_url = "https://opentelemetry.io/schemas/1.25.0"
        for s in range(2):
            scope_logs = resource_logs.scope_logs.add()
            scope_logs.scope.name = f"scope{s}"
            scope_logs.scope.version = "1"
            for i in range(3):
                log = scope_logs.log_records.add()
                log.time_unix_nano = 1_700_000_000_000_000_000 + i
                log.observed_time_unix_nano = 2**64 - 1
                log.severity_number = 9  # type: ignore[assignment]
                log.severity_text = "INFO"
                log.event_name = "audit"
                log.trace_id = bytes(range(16))
                log.span_id = bytes(range(8))
                log.flags = 1
                log.dropped_attributes_count = 2
                log.attributes.add(key="audit.action").value.string_value = f"A{r}{s}{i}"
                log.attributes.add(key="dup").value.int_value = 1
                log.attributes.add(key="dup").value.string_value = "later wins"
                log.attributes.add(key="no value")
                log.attributes.append(KeyValue(value=AnyValue(string_value="no key")))
        several.resource_logs.add()  # a resource without scopes
    requests["several"] = several
    requests["empty"] = ExportLogsServiceRequest()
    return requests


REQUESTS = _requests()


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_the_compiled_decoder_reads_what_the_parsed_message_holds(speedups: Any,
                                                                  name: str) -> None:
    payload = REQUESTS[name].SerializeToString()
    request = ExportLogsServiceRequest.FromString(payload)
    expected = otlp.python_log_fields(request)
    got = speedups.otlp_decode_logs(payload)
    assert got is not None
    assert repr(got) == repr(expected)  # repr: NaN-free, and -0.0 apart from 0.0
    assert got == expected
    assert otlp.log_fields(request, payload) == expected


def _unusual_payloads() -> dict[str, bytes]:
    base = log_request([{"attributes": {"audit.action": "X"}, "body": "b"}])
    payload = base.SerializeToString()
    log = base.resource_logs[0].scope_logs[0].log_records[0]
    one_log = log.SerializeToString()
    # a log record whose body is given twice: the runtime keeps the last string
    twice = (b"\x2a" + bytes([len(b"\x0a\x01a")]) + b"\x0a\x01a"
             + b"\x2a" + bytes([len(b"\x0a\x01z")]) + b"\x0a\x01z")

    def request_of(log_bytes: bytes) -> bytes:
        scope = b"\x12" + bytes([len(log_bytes)]) + log_bytes
        resource_logs = b"\x12" + bytes([len(scope)]) + scope
        return b"\x0a" + bytes([len(resource_logs)]) + resource_logs

    return {
        "body twice": request_of(one_log + twice),
        # time_unix_nano as a varint: the runtime keeps it as an unknown field
        "wrong wire type": request_of(b"\x08\x05" + one_log),
        "resource twice": b"\x0a\x04\x0a\x00\x0a\x00" + payload,
    }


UNUSUAL = _unusual_payloads()


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_what_the_decoder_leaves_to_the_runtime_reads_the_message(speedups: Any,
                                                                  name: str) -> None:
    payload = UNUSUAL[name]
    request = ExportLogsServiceRequest.FromString(payload)
    assert speedups.otlp_decode_logs(payload) is None
    assert otlp.log_fields(request, payload) == otlp.python_log_fields(request)


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_records_are_the_same_with_and_without_the_payload(name: str, tmp_path: Any) -> None:
    payload = REQUESTS[name].SerializeToString()
    request = ExportLogsServiceRequest.FromString(payload)
    trail = AuditTrail(f"sqlite:///{tmp_path}/d.db", auto_migrate=True)
    try:
        fast = records_from_request(trail, request, payload)
        plain = records_from_request(trail, request)
    finally:
        trail.shutdown(10)
    assert (fast.rejected, fast.message, fast.unconverted) == (
        plain.rejected, plain.message, plain.unconverted)
    # build_record stamps a fresh correlation ID only where neither has a stable one
    assert [r.id for r in fast.records] == [r.id for r in plain.records]
    assert [r._replace(correlation_id=None) for r in fast.records] == [
        r._replace(correlation_id=None) for r in plain.records]


def test_bytes_values_read_as_base64_text() -> None:
    request = log_request([{"attributes": {"audit.action": "X", "raw": b"\x00\x01"}}])
    (values,) = otlp.log_fields(request, request.SerializeToString())
    assert values[2]["raw"] == "AAE="
    assert any_value(b"\x00\x01").bytes_value == b"\x00\x01"
