"""``audit.auth.method`` and ``audit.delegation_chain`` over OTLP: ingested by
``otel-audit serve`` (as a JSON string or a native array of maps) and written by the
forwarder's OTLP encoding, round trip to the store on both stores."""

from __future__ import annotations

import json

import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from otlp_helpers import PROTOBUF_GZIP, SPAN_ID, TRACE_ID, log_request, protobuf_body

from otel_audit import AuditTrail
from otel_audit.forward.otlp import OtlpAuditExporter, encode_request
from otel_audit.server.ingest import records_from_request

CHAIN = [{"principal": "alice", "via": "oauth_token_exchange"},
         {"principal": "svc-reports", "via": "service_account"}]


def _log(user: str, **attributes: object) -> dict[str, object]:
    return {"event_name": "audit", "trace_id": TRACE_ID, "span_id": SPAN_ID,
            "attributes": {"audit.action": "EXPORT", "user.id": user, **attributes}}


def test_ingest_maps_the_identity_attributes(client: httpx.Client,
                                             ingest_trail: AuditTrail) -> None:
    request = log_request([
        _log("as-text", **{"audit.auth.method": "oauth",
                           "audit.delegation_chain": json.dumps(CHAIN)}),
        _log("as-array", **{"audit.auth.method": "mtls", "audit.delegation_chain": CHAIN}),
        _log("neither"),
    ])
    r = client.post("/v1/logs", content=protobuf_body(request), headers=PROTOBUF_GZIP)
    assert r.status_code == 200, r.text
    stored = {r.user_id: (r.auth_method, r.delegation_chain) for r in ingest_trail.records()}
    assert stored == {"as-text": ("oauth", CHAIN), "as-array": ("mtls", CHAIN),
                      "neither": (None, None)}


def test_forwarded_records_keep_their_identity(ingest_trail: AuditTrail) -> None:
    source = [
        ingest_trail.build_record("UPDATE", user_id="svc-reports", auth_method="oauth",
                                  acting_as="alice", delegation_chain=CHAIN),
        ingest_trail.build_record("READ", user_id="erin", auth_method="password",
                                  delegation_chain=[]),
        ingest_trail.build_record("READ", user_id="frank"),
    ]
    # the bytes the forwarder sends (its compiled encoder when built, else protobuf's)
    body = OtlpAuditExporter("http://127.0.0.1:4318", compression=False).encode(source)
    assert ExportLogsServiceRequest.FromString(body) == encode_request(source)
    batch = records_from_request(ingest_trail, ExportLogsServiceRequest.FromString(body))
    assert [r.id for r in batch.records] == [r.id for r in source]  # audit.record_id kept
    got = [(r.auth_method, r.acting_as, r.delegation_chain) for r in batch.records]
    assert got == [("oauth", "alice", CHAIN), ("password", None, []), (None, None, None)]
    for record in batch.records:
        ingest_trail.submit(record)
    ingest_trail.flush()
    stored = {r.id: (r.auth_method, r.acting_as, r.delegation_chain)
              for r in ingest_trail.records()}
    assert stored == {r.id: g for r, g in zip(source, got, strict=True)}
