"""The receiver over HTTP (in-process ASGI): encodings, acknowledgement, every error status."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from otlp_helpers import (
    PROTOBUF_GZIP,
    SPAN_ID,
    TRACE_ID,
    audit_logs,
    log_request,
    protobuf_body,
    running,
)

from otel_audit import AuditTrail
from otel_audit.server import IngestApp, default_ack_mode
from otel_audit.testing import InMemoryAuditExporter


def _response(body: bytes) -> ExportLogsServiceResponse:
    response = ExportLogsServiceResponse()
    response.ParseFromString(body)
    return response


def test_protobuf_gzip_is_stored_with_trace_ids(client: httpx.Client,
                                                 ingest_trail: AuditTrail) -> None:
    body = protobuf_body(log_request(audit_logs(3)))
    r = client.post("/v1/logs", content=body, headers=PROTOBUF_GZIP)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-protobuf"
    assert not _response(r.content).HasField("partial_success")
    # sync acknowledgement: committed before the 200, no flush needed
    rows = ingest_trail.records(trace_id=TRACE_ID)
    assert len(rows) == 3
    assert {row.span_id for row in rows} == {SPAN_ID}
    assert {row.service_name for row in rows} == {"billing"}
    assert {row.correlation_id for row in rows} == {TRACE_ID}
    assert sorted(row.resource_id for row in rows) == ["inv-0", "inv-1", "inv-2"]


def test_raw_otlp_json_with_hex_ids(client: httpx.Client, ingest_trail: AuditTrail) -> None:
    document = {"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "orders"}}]},
        "scopeLogs": [{"scope": {"name": "raw"}, "logRecords": [{
            "timeUnixNano": "1700000000123456789",
            "eventName": "audit",
            "traceId": TRACE_ID,
            "spanId": SPAN_ID,
            "body": {"stringValue": "ignored when audit.action is present"},
            "attributes": [
                {"key": "audit.action", "value": {"stringValue": "DELETE"}},
                {"key": "user.id", "value": {"stringValue": "alice"}},
                {"key": "audit.old_values", "value": {"kvlistValue": {"values": [
                    {"key": "status", "value": {"stringValue": "draft"}},
                    {"key": "lines", "value": {"arrayValue": {"values": [
                        {"intValue": "1"}, {"doubleValue": 2.5}]}}}]}}},
                {"key": "audit.success", "value": {"boolValue": False}},
                {"key": "unknownField", "value": {"stringValue": "x"}},
            ],
            "someFutureField": 1,
        }]}],
    }]}
    r = client.post("/v1/logs", json=document)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert json.loads(r.content) == {}
    (row,) = ingest_trail.records(trace_id=TRACE_ID)
    assert row.action == "DELETE"
    assert row.user_id == "alice"
    assert row.service_name == "orders"
    assert row.span_id == SPAN_ID
    assert row.success is False
    assert row.old_values == {"status": "draft", "lines": [1, 2.5]}
    assert row.timestamp.isoformat() == "2023-11-14T22:13:20.123456+00:00"


def test_non_audit_records_are_reported_through_partial_success(
        client: httpx.Client, ingest_trail: AuditTrail) -> None:
    logs = [*audit_logs(2), {"body": "plain application log"},
            {"event_name": "login", "attributes": {"user.id": "bob"}}]
    r = client.post("/v1/logs", content=protobuf_body(log_request(logs)), headers=PROTOBUF_GZIP)
    assert r.status_code == 200
    partial = _response(r.content).partial_success
    assert partial.rejected_log_records == 2
    assert "not audit entries" in partial.error_message
    assert len(ingest_trail.records()) == 2


def test_partial_success_in_json(client: httpx.Client) -> None:
    body = json_format.MessageToJson(log_request([{"body": "not audit"}]))
    r = client.post("/v1/logs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200
    partial = json.loads(r.content)["partialSuccess"]
    assert int(partial["rejectedLogRecords"]) == 1


def test_replayed_batch_is_stored_once(client: httpx.Client, ingest_trail: AuditTrail) -> None:
    body = protobuf_body(log_request(audit_logs(5)))
    for _ in range(3):  # a Collector retrying after a lost response
        assert client.post("/v1/logs", content=body, headers=PROTOBUF_GZIP).status_code == 200
    assert len(ingest_trail.records()) == 5


def _status(r: object) -> status_pb2.Status:
    status = status_pb2.Status()
    status.ParseFromString(r.content)  # type: ignore[attr-defined]
    return status


def test_malformed_bodies_are_400(client: httpx.Client) -> None:
    bad = [
        (b"\xff\xff\xff garbage", {"content-type": "application/x-protobuf"}),
        (b"{not json", {"content-type": "application/json"}),
        (b'{"resourceLogs": "nope"}', {"content-type": "application/json"}),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}',
         {"content-type": "application/json"}),
        (b"not gzip", PROTOBUF_GZIP),
        (gzip.compress(protobuf_body(log_request(audit_logs(1)), compress=False))[:-8],
         PROTOBUF_GZIP),
    ]
    for body, headers in bad:
        r = client.post("/v1/logs", content=body, headers=headers)
        assert r.status_code == 400, (body, r.content)
    r = client.post("/v1/logs", content=b"\xff\xff",
                    headers={"content-type": "application/x-protobuf"})
    assert _status(r).code == 3  # INVALID_ARGUMENT, protobuf-encoded like the request


def test_wrong_content_type_or_encoding_is_415(client: httpx.Client) -> None:
    body = protobuf_body(log_request(audit_logs(1)))
    assert client.post("/v1/logs", content=body,
                       headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/v1/logs", content=body).status_code == 415
    assert client.post("/v1/logs", content=body, headers={
        "content-type": "application/x-protobuf", "content-encoding": "br"}).status_code == 415


def test_oversized_bodies_are_413(make_app: Callable[..., IngestApp],
                                  ingest_trail: AuditTrail) -> None:
    small = 4096
    with running(make_app(max_body_bytes=small)) as c:
        raw = protobuf_body(log_request(audit_logs(200)), compress=False)
        assert len(raw) > small
        r = c.post("/v1/logs", content=raw, headers={"content-type": "application/x-protobuf"})
        assert r.status_code == 413
        # a small compressed body that expands past the limit (a "zip bomb") too
        bomb = gzip.compress(b"\x00" * (small * 50))
        assert len(bomb) < small
        assert c.post("/v1/logs", content=bomb, headers=PROTOBUF_GZIP).status_code == 413
        ok = protobuf_body(log_request(audit_logs(2)))
        assert c.post("/v1/logs", content=ok, headers=PROTOBUF_GZIP).status_code == 200
    assert len(ingest_trail.records()) == 2


def test_token_is_required_when_configured(make_app: Callable[..., IngestApp],
                                           ingest_trail: AuditTrail) -> None:
    body = protobuf_body(log_request(audit_logs(1)))
    with running(make_app(token="s3cret-token")) as c:
        for auth in (None, "Bearer wrong", "Basic s3cret-token", "Bearer s3cret-token-longer"):
            headers = dict(PROTOBUF_GZIP)
            if auth:
                headers["authorization"] = auth
            r = c.post("/v1/logs", content=body, headers=headers)
            assert r.status_code == 401, auth
            assert r.headers["www-authenticate"] == "Bearer"
        headers = {**PROTOBUF_GZIP, "authorization": "Bearer s3cret-token"}
        assert c.post("/v1/logs", content=body, headers=headers).status_code == 200
        # health checks stay open for load balancers
        assert c.get("/healthz").status_code == 200
    assert len(ingest_trail.records()) == 1


def test_unknown_paths_and_methods(client: httpx.Client) -> None:
    assert client.post("/v1/traces", content=b"").status_code == 404
    assert client.get("/v1/logs").status_code == 405
    assert client.post("/healthz").status_code == 405


def test_healthz_reports_counters(client: httpx.Client) -> None:
    client.post("/v1/logs", content=protobuf_body(log_request(audit_logs(2))),
                headers=PROTOBUF_GZIP)
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["ack_mode"] == "sync"
    assert body["accepted_records"] == 2


def test_store_outage_is_503_with_retry_after_then_recovers(
        make_trail: Callable[..., AuditTrail]) -> None:
    exporter = InMemoryAuditExporter()
    trail = make_trail(service_name="ingest", exporter=exporter)
    exporter.fail_all()  # the destination is down
    body = protobuf_body(log_request(audit_logs(4)))
    with running(IngestApp(trail, ack_mode="sync", retry_after=7)) as c:
        r = c.post("/v1/logs", content=body, headers=PROTOBUF_GZIP)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "7"
        assert _status(r).code == 14  # UNAVAILABLE
        exporter.recover()
        assert c.post("/v1/logs", content=body, headers=PROTOBUF_GZIP).status_code == 200
    assert len(exporter.get_finished_records()) == 4


def test_too_many_requests_in_flight_is_503(make_trail: Callable[..., AuditTrail]) -> None:
    exporter = InMemoryAuditExporter()
    trail = make_trail(service_name="ingest", exporter=exporter)
    exporter.hold()  # the first request's write waits
    body = protobuf_body(log_request(audit_logs(1)))
    with running(IngestApp(trail, ack_mode="sync", max_inflight=1)) as c:
        first: dict[str, int] = {}
        t = threading.Thread(target=lambda: first.setdefault(
            "status", c.post("/v1/logs", content=body, headers=PROTOBUF_GZIP).status_code))
        t.start()
        assert exporter.held.wait(30)
        r = c.post("/v1/logs", content=body, headers=PROTOBUF_GZIP)
        assert r.status_code == 503
        assert "retry-after" in r.headers
        exporter.release()
        t.join(30)
    assert first["status"] == 200
    assert len(exporter.get_finished_records()) == 1


def test_default_ack_mode_follows_available_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_audit import config

    monkeypatch.setattr(config, "MODES", ("async", "sync"))
    assert default_ack_mode() == "sync"
    monkeypatch.setattr(config, "MODES", ("async", "durable", "sync"))
    assert default_ack_mode() == "durable"


def test_async_is_not_an_acknowledgement_mode(ingest_trail: AuditTrail) -> None:
    with pytest.raises(ValueError, match="ack_mode"):
        IngestApp(ingest_trail, ack_mode="async")


def test_default_ack_mode_stores_everything(make_app: Callable[..., IngestApp],
                                            ingest_trail: AuditTrail) -> None:
    app = make_app(ack_mode=None)
    assert app.ack_mode == default_ack_mode()
    with running(app) as c:
        r = c.post("/v1/logs", content=protobuf_body(log_request(audit_logs(6))),
                   headers=PROTOBUF_GZIP)
        assert r.status_code == 200
    # the app's shutdown flushed the trail: what was acknowledged is in the store
    assert len(ingest_trail.records(trace_id=TRACE_ID)) == 6


def test_durable_ack_survives_a_store_outage(make_trail: Callable[..., AuditTrail],
                                             tmp_path: Path) -> None:
    exporter = InMemoryAuditExporter()
    trail = make_trail(mode="durable", journal_dir=str(tmp_path / "journal"),
                       retry_max_backoff=0.1, exporter=exporter)
    exporter.fail_all()  # the destination is down
    with running(IngestApp(trail, ack_mode="durable")) as c:
        r = c.post("/v1/logs", content=protobuf_body(log_request(audit_logs(5))),
                   headers=PROTOBUF_GZIP)
        # acknowledged from the journal although the destination is down
        assert r.status_code == 200
        exporter.recover()
    assert trail.flush(30)
    assert [r.trace_id for r in exporter.get_finished_records()] == [TRACE_ID] * 5


def test_concatenated_gzip_members_are_all_stored(client: httpx.Client,
                                                  ingest_trail: AuditTrail) -> None:
    # two serialized requests back to back are one request holding both (protobuf
    # merges repeated fields); a sender may compress them as two gzip members
    first = log_request(audit_logs(2)).SerializeToString()
    second = log_request(audit_logs(3, action="DELETE")).SerializeToString()
    body = gzip.compress(first) + gzip.compress(second)
    r = client.post("/v1/logs", content=body, headers=PROTOBUF_GZIP)
    assert r.status_code == 200, r.content
    assert sorted(row.action for row in ingest_trail.records()) == ["DELETE"] * 3 + ["UPDATE"] * 2
    r = client.post("/v1/logs", content=gzip.compress(first) + b"trailing garbage",
                    headers=PROTOBUF_GZIP)
    assert r.status_code == 400
    assert "trailing" in _status(r).message


def test_bodies_up_to_the_limit_are_accepted_compressed_or_not(
        make_app: Callable[..., IngestApp], ingest_trail: AuditTrail) -> None:
    raw = protobuf_body(log_request(audit_logs(50)), compress=False)
    with running(make_app(max_body_bytes=len(raw))) as c:  # the limit, to the byte
        plain = c.post("/v1/logs", content=raw,
                       headers={"content-type": "application/x-protobuf"})
        assert plain.status_code == 200, plain.content
        packed = c.post("/v1/logs", content=gzip.compress(raw), headers=PROTOBUF_GZIP)
        assert packed.status_code == 200, packed.content
        over = c.post("/v1/logs", content=gzip.compress(raw + b"\x00"), headers=PROTOBUF_GZIP)
        assert over.status_code == 413
    assert len(ingest_trail.records()) == 50
