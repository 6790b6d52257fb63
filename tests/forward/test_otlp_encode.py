"""The compiled OTLP encoder writes exactly the bytes of the protobuf runtime's encoding.

``otel_audit._speedups.otlp_encode_logs`` (otel_audit/_speedups_otlp.c) is the compiled
twin of ``encode_request(records).SerializeToString()``: same request, same bytes, for
ordinary records and odd ones; what it does not take (a value out of int64, text that is
not UTF-8, a time before 1970) raises, and ``serialize_request`` then answers what the
Python path answers.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
from typing import Any

import pytest
from forward_helpers import engine_of
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otel_audit import AuditTrail
from otel_audit._accel import pure_python
from otel_audit.fields import JSON_FIELDS
from otel_audit.forward import otlp
from otel_audit.forward.items import RawJSON
from otel_audit.forward.reader import read_after, stream_heads
from otel_audit.record import AuditRecord
from otel_audit.server import otlp as server_otlp
from otel_audit.server.ingest import records_from_request

BASE = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


class Colour(enum.IntEnum):
    RED = 3


def _record(i: int, **overrides: Any) -> AuditRecord:
    values: dict[str, Any] = dict(
        id=f"id-{i}", timestamp=BASE + dt.timedelta(seconds=i, microseconds=i),
        action="UPDATE" if i % 2 else "DELETE", user_id=f"user-{i % 3}",
        correlation_id=f"c-{i}", trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id=format(i + 1, "016x"), resource_type="invoice", resource_id=str(i),
        resource_name=f"invoice {i} é ✓", user_email=f"u{i}@example.com",
        team_id="team-a", client_ip="10.0.0.1", user_agent="curl/8",
        request_path=f"/invoices/{i}", request_method="PATCH", request_id=f"req-{i}",
        old_values={"amount": i}, new_values={"amount": i + 1, "note": "é|=\\", "n": None},
        changes=None, data_classification="internal", requires_review=bool(i % 2),
        success=i % 5 != 0, error_message=None if i % 5 else "denied",
        context={"k": [1, 2.5, True]}, service_name="billing" if i % 3 else "web",
        acting_as=None, schema_version=2)
    record = AuditRecord(**{name: values.get(name) for name in AuditRecord._fields})
    return record._replace(**overrides)


ODD: list[dict[str, Any]] = [
    {},
    {"service_name": None},
    {"trace_id": None, "span_id": "00f067aa0ba902b7"},  # a span without a trace: no IDs
    {"trace_id": "not hex"},
    {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "zz"},  # trace kept
    {"trace_id": "4b f9 2f"},  # fromhex takes spaces between bytes
    {"trace_id": "", "span_id": ""},
    {"action": ""},
    {"action": "ação 🚀"},
    {"user_id": ""},
    {"requires_review": True, "success": False},
    {"team_id": 7, "client_ip": -12, "user_agent": 2**63 - 1, "request_path": -(2**63)},
    {"team_id": 1.5, "client_ip": -0.0, "user_agent": math.inf, "request_path": math.nan},
    {"team_id": True, "client_ip": False},
    {"team_id": Colour.RED, "client_ip": dt.date(2026, 1, 2), "user_agent": b"raw"},
    {"old_values": {"when": BASE}, "new_values": [], "changes": "text", "context": 3},
    {"old_values": {}, "new_values": {"deep": {"er": [{"x": "ü"}]}}},
    {"timestamp": dt.datetime(1970, 1, 1, tzinfo=dt.UTC)},  # time 0: left out
    {"timestamp": dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5)))},
    {"id": None},
    {"service_name": ""},
]


def _batches() -> list[list[AuditRecord]]:
    plain = [_record(i) for i in range(40)]
    odd = [_record(i, **changes) for i, changes in enumerate(ODD)]
    return [plain, odd, [odd[1], plain[0], odd[1]], [], [_record(0, **ODD[5])]]


@pytest.mark.parametrize("batch", _batches(), ids=["plain", "odd", "services", "empty", "one"])
def test_serialize_request_is_the_protobuf_encoding(batch: list[AuditRecord]) -> None:
    expected = otlp.encode_request(batch).SerializeToString()
    assert otlp.serialize_request(batch) == expected


@pytest.mark.parametrize("batch", _batches(), ids=["plain", "odd", "services", "empty", "one"])
def test_the_compiled_encoder_writes_the_same_bytes(speedups: Any,
                                                    batch: list[AuditRecord]) -> None:
    assert otlp._encode_logs is speedups.otlp_encode_logs
    assert otlp._PLAN is not None
    compiled = speedups.otlp_encode_logs(batch, otlp._PLAN, otlp._POSITIONS,
                                         otlp._SCOPE_NAME, otlp._json_text)
    assert compiled == otlp.encode_request(batch).SerializeToString()


@pytest.mark.parametrize("changes", [
    {"team_id": 2**63},  # out of int64
    {"client_ip": -(2**63) - 1},
    {"action": "\ud800"},  # not encodable as UTF-8
    {"user_id": "lone \udc80"},
    {"action": 5},  # not a str: the runtime refuses it
    {"timestamp": dt.datetime(1969, 12, 31, 23, 59, tzinfo=dt.UTC)},
    {"service_name": 12},
])
def test_what_the_encoder_does_not_take_goes_the_python_way(speedups: Any,
                                                            changes: dict[str, Any]) -> None:
    batch = [_record(1), _record(2, **changes)]
    with pytest.raises((TypeError, ValueError, OverflowError)):
        speedups.otlp_encode_logs(batch, otlp._PLAN, otlp._POSITIONS, otlp._SCOPE_NAME,
                                  otlp._json_text)
    try:
        expected: bytes | type[Exception] = otlp.encode_request(batch).SerializeToString()
    except Exception as exc:  # the Python path's own answer
        expected = type(exc)
    if isinstance(expected, bytes):
        assert otlp.serialize_request(batch) == expected
    else:
        with pytest.raises(expected):
            otlp.serialize_request(batch)


def test_the_pure_path_is_forced_by_the_switch() -> None:
    if pure_python:
        assert otlp._encode_logs is None


def test_the_receiver_reads_back_the_same_records(tmp_path: Any) -> None:
    """What the encoder writes comes back through the receiver's conversion."""
    batch = [_record(i) for i in range(30)]
    request = ExportLogsServiceRequest()
    request.ParseFromString(otlp.serialize_request(batch))
    trail = AuditTrail(f"sqlite:///{tmp_path}/r.db", auto_migrate=True)
    try:
        got = {r.id: r for r in records_from_request(trail, request).records}
    finally:
        trail.shutdown(10)
    assert sorted(got) == sorted(r.id for r in batch)
    for record in batch:
        back = got[record.id]
        assert (back.timestamp, back.action, back.user_id, back.old_values, back.new_values,
                back.context, back.success, back.service_name, back.trace_id) == (
            record.timestamp, record.action, record.user_id, record.old_values,
            record.new_values, record.context, record.success, record.service_name,
            record.trace_id)


def _attributes(body: bytes) -> list[dict[str, Any]]:
    """Each log record's attributes, JSON fields parsed (their text may differ)."""
    request = ExportLogsServiceRequest.FromString(body)
    json_names = {otlp.FIELD_ATTRIBUTES[name][0] for name in JSON_FIELDS
                  if name in otlp.FIELD_ATTRIBUTES}
    out = []
    for values in server_otlp.python_log_fields(request):
        attrs = dict(values[2])
        for name in json_names & attrs.keys():
            attrs[name] = json.loads(attrs[name])
        out.append(attrs)
    return out


def test_json_fields_read_as_stored_text_send_the_same_documents(source: str) -> None:
    """``raw_json`` reading (the OTLP destination with the compiled encoder) gives each
    JSON field's stored text, which parses to the value the plain read gives, and the
    requests carry the same documents either way (both stores)."""
    engine = engine_of(source)
    try:
        with engine.connect() as conn:
            for stream in stream_heads(conn):
                plain = [i.record for i in read_after(conn, stream, 0, 500).items]
                raw = [i.record for i in read_after(conn, stream, 0, 500, raw_json=True).items]
                assert len(raw) == len(plain) > 0
                for a, b in zip(raw, plain, strict=True):
                    for name in JSON_FIELDS:
                        value = getattr(a, name)
                        assert value is None or type(value) is RawJSON
                        assert (None if value is None else json.loads(value)) == getattr(b, name)
                    assert a._replace(**{n: None for n in JSON_FIELDS}) == b._replace(
                        **{n: None for n in JSON_FIELDS})
                assert _attributes(otlp.serialize_request(raw)) == _attributes(
                    otlp.encode_request(plain).SerializeToString())
                # what the compiled encoder does not take goes the Python way, parsed
                odd = [raw[0]._replace(team_id=2**70), *raw[1:]]
                expected = [r._replace(team_id=2**70) for r in plain[:1]] + plain[1:]
                with pytest.raises(ValueError):
                    otlp.encode_request(expected)  # out of int64 for the runtime too
                with pytest.raises(ValueError):
                    otlp.serialize_request(odd)
    finally:
        engine.dispose()
