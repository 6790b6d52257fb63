"""OTLP decoding and the log record -> audit record conversion (no HTTP)."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import uuid
import zlib

import pytest
from otlp_helpers import SPAN_ID, TRACE_ID, any_value, audit_logs, log_request

from otel_audit import AuditTrail
from otel_audit.mapping import JSON_TOO_DEEP
from otel_audit.record import NORMALISATION_KEY, AuditRecord
from otel_audit.server import ingest, otlp
from otel_audit.server.ingest import deliver, records_from_request, stable_record_id


def test_any_value_converts_every_kind() -> None:
    value = {"s": "x", "b": True, "i": 7, "d": 1.5, "raw": b"\x00\x01",
             "list": [1, "two", {"three": 3}], "empty": {}}
    converted = otlp.any_value(any_value(value))
    assert converted == {**value, "raw": base64.b64encode(b"\x00\x01").decode()}
    assert otlp.any_value(otlp.AnyValue()) is None


def test_audit_detection_and_mapping(ingest_trail: AuditTrail) -> None:
    request = log_request([
        {"event_name": "audit", "body": "EXPORT", "trace_id": TRACE_ID, "span_id": SPAN_ID,
         "attributes": {"user.id": "alice", "enduser.id": "ignored",
                        "audit.requires_review": "true", "audit.context": {"ticket": 9}}},
        {"attributes": {"audit.action": "READ", "event.name": "other"}},  # attribute marks it
        {"attributes": {"event.name": "audit"}, "body": {"structured": 1}},  # legacy event name
        {"body": "an ordinary log line"},
    ], service_name=None)
    batch = records_from_request(ingest_trail, request)
    assert batch.rejected == 1
    first, second, third = batch.records
    assert (first.action, first.user_id, first.requires_review) == ("EXPORT", "alice", True)
    assert (first.trace_id, first.span_id, first.correlation_id) == (TRACE_ID, SPAN_ID, TRACE_ID)
    assert first.context == {"ticket": 9}
    assert first.service_name == "ingest"  # no service.name on the resource: the trail's
    assert second.action == "READ" and second.trace_id is None
    assert second.correlation_id == second.id  # stable too, so replays agree
    assert third.action == "audit"  # no action attribute and a non-string body


def test_ids_are_stable_across_replays_and_time_ordered(ingest_trail: AuditTrail) -> None:
    request = log_request(audit_logs(3))
    first = [r.id for r in records_from_request(ingest_trail, request).records]
    again = [r.id for r in records_from_request(ingest_trail, request).records]
    assert first == again and len(set(first)) == 3
    parsed = uuid.UUID(hex=first[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert int(first[0][:12], 16) == 1_700_000_000_000  # the record's own millisecond
    assert stable_record_id(2_000_000, b"\xff" * 32) > stable_record_id(1_000_000, b"\xff" * 32)


def test_record_id_attribute_is_kept(ingest_trail: AuditTrail) -> None:
    request = log_request([{"attributes": {"audit.action": "X", "audit.record_id": "abc123"}}])
    (record,) = records_from_request(ingest_trail, request).records
    assert record.id == "abc123"


def test_stable_ids_replace_only_the_id_and_without_a_trace_the_correlation_id(
        ingest_trail: AuditTrail) -> None:
    # the converter swaps the IDs in by position: every other field stays build_record's
    request = log_request([
        {"event_name": "audit", "trace_id": TRACE_ID, "span_id": SPAN_ID,
         "attributes": {"audit.action": "EXPORT", "user.id": "u1", "audit.success": "false",
                        "audit.old_values": '{"a": 1}', "audit.request_id": "req-9"}},
        {"attributes": {"audit.action": "LOGIN", "user.email": "a@example.com"}},
    ])
    traced, untraced = records_from_request(ingest_trail, request).records
    assert (traced.action, traced.user_id, traced.success, traced.old_values,
            traced.request_id) == ("EXPORT", "u1", False, {"a": 1}, "req-9")
    assert (traced.trace_id, traced.span_id, traced.correlation_id) == (TRACE_ID, SPAN_ID,
                                                                        TRACE_ID)
    assert traced.service_name == "billing" and traced.id != TRACE_ID
    assert untraced.trace_id is None and untraced.correlation_id == untraced.id
    assert (untraced.action, untraced.user_email) == ("LOGIN", "a@example.com")
    assert untraced.timestamp == dt.datetime(2023, 11, 14, 22, 13, 20, 1, tzinfo=dt.UTC)
    assert type(untraced) is AuditRecord and untraced._fields[0] == "id"


def test_decompress_gzip_deflate_identity_and_limits() -> None:
    data = b"payload" * 100
    assert otlp.decompress(zlib.compress(data), "deflate", 10_000) == data
    assert otlp.decompress(data, None, 10_000) == data
    with pytest.raises(otlp.PayloadTooLarge):
        otlp.decompress(zlib.compress(data), "deflate", 100)
    with pytest.raises(otlp.UnsupportedMediaType):
        otlp.decompress(data, "zstd", 10_000)


def test_media_type_accepts_parameters() -> None:
    assert otlp.media_type("application/json; charset=utf-8") == otlp.JSON
    assert otlp.media_type("Application/X-Protobuf") == otlp.PROTOBUF
    with pytest.raises(otlp.UnsupportedMediaType):
        otlp.media_type("application/grpc")


def test_every_gzip_member_is_decoded() -> None:
    first, second = b"first member;" * 50, b"second member" * 50
    body = gzip.compress(first) + gzip.compress(second) + gzip.compress(b"")
    assert otlp.decompress(body, "gzip", 10_000) == first + second


def test_trailing_bytes_after_the_compressed_stream_are_refused() -> None:
    data = b"payload" * 100
    for body, encoding in [
        (gzip.compress(data) + b"garbage", "gzip"),
        (gzip.compress(data) + b"\x00\x00\x00\x00", "gzip"),  # zero padding is garbage too
        (gzip.compress(data) + b"\x1f\x8b\x08", "gzip"),  # a truncated second member
        (zlib.compress(data) + zlib.compress(data), "deflate"),  # deflate has no members
    ]:
        with pytest.raises(otlp.BadRequest):
            otlp.decompress(body, encoding, 10_000)


def test_decompressed_limit_counts_every_member() -> None:
    member = gzip.compress(b"\x00" * 600)
    assert len(otlp.decompress(member, "gzip", 600)) == 600  # exactly the limit is fine
    with pytest.raises(otlp.PayloadTooLarge):
        otlp.decompress(member + member, "gzip", 1000)  # each under it, together over
    assert len(otlp.decompress(member + member, "gzip", 1200)) == 1200
    with pytest.raises(otlp.PayloadTooLarge):
        otlp.decompress(b"x" * 1001, None, 1000)


def test_deeply_nested_json_text_is_kept_as_text_with_a_note(ingest_trail: AuditTrail) -> None:
    deep = "[" * 5000 + "]" * 5000  # deeper than Python's JSON parser follows
    request = log_request([
        {"attributes": {"audit.action": "X", "user.id": "u", "audit.context": deep}},
        {"attributes": {"audit.action": "Y", "user.id": "u", "audit.context": {"ticket": 9},
                        "audit.old_values": deep, "audit.new_values": '{"ok": true}'}},
    ])
    batch = records_from_request(ingest_trail, request)
    assert (batch.rejected, batch.unconverted) == (0, 0)
    note = {"field": "context", "kind": JSON_TOO_DEEP, "stored": "text"}
    first, second = batch.records
    assert first.context == {"value": deep, NORMALISATION_KEY: [note]}
    assert second.old_values == deep
    assert second.new_values == {"ok": True}
    assert second.context == {"ticket": 9, NORMALISATION_KEY: [{**note, "field": "old_values"}]}
    deliver(ingest_trail, batch.records, "sync")
    stored = {r.action: r for r in ingest_trail.records()}
    assert stored["X"].context == first.context
    assert stored["Y"].old_values == deep
    assert stored["Y"].context == second.context


def test_a_record_the_mapping_fails_on_is_stored_as_received(
        ingest_trail: AuditTrail, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> dict[str, object]:
        raise RuntimeError("a bug in the mapping")

    monkeypatch.setattr(ingest, "attributes_to_fields", broken)
    request = log_request(audit_logs(2))
    batch = records_from_request(ingest_trail, request)
    assert (len(batch.records), batch.rejected, batch.unconverted) == (2, 0, 2)
    assert "stored as received" in batch.message
    again = records_from_request(ingest_trail, request)
    assert [r.id for r in again.records] == [r.id for r in batch.records]  # replay-stable
    first = batch.records[0]
    assert (first.action, first.trace_id, first.span_id) == ("UPDATE", TRACE_ID, SPAN_ID)
    assert first.context is not None
    raw = first.context["otlp_log_record"]
    assert raw["eventName"] == "audit"
    assert {"key": "user.id", "value": {"stringValue": "user-0"}} in raw["attributes"]
    (note,) = first.context[NORMALISATION_KEY]
    assert note["kind"] == "conversion_failed"
    assert "a bug in the mapping" in note["error"]


@pytest.mark.parametrize("value", ["text", "[1]", "", 5, -2.5, 12345678901234567, True,
                                   False, [1, "a"], {"k": ["v", None]}, {"rows": 12}])
def test_json_field_values_of_every_kind_make_the_round_trip(value: object) -> None:
    from otel_audit.mapping import attributes_to_fields, record_to_attributes
    from otel_audit.testing import capture_audit

    with capture_audit() as capture:
        record = capture.trail.build_record("UPDATE", user_id="u", old_values=value,
                                            new_values=value, changes=value, context=value)
    fields = attributes_to_fields(record_to_attributes(record))
    for name in ("old_values", "new_values", "changes", "context"):
        assert fields[name] == getattr(record, name), name
        assert type(fields[name]) is type(getattr(record, name)), name


@pytest.mark.parametrize(("text", "expected"), [
    ("plain words", "plain words"), ("NaN", "NaN"), ("-Infinity", "-Infinity"),
    ("{not json", "{not json"), ('"quoted"', "quoted"), ("7", 7), ("null", None),
])
def test_a_json_field_text_is_its_document_or_itself(text: str, expected: object) -> None:
    from otel_audit.mapping import attributes_to_fields

    assert attributes_to_fields({"audit.old_values": text}).get("old_values") == expected
