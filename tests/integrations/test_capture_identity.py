"""``auth_method`` and ``delegation_chain`` through every capture door: the request
middleware's resolver (ASGI and WSGI), spans and span events, the Logs SDK in both
directions, and the seed-compatible service."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from otel_capture_helpers import Logs, Tracing

from otel_audit import AuditTrail, RequestContext, mapping, request_scope
from otel_audit._internal import log_internal_error
from otel_audit.compat import AuditTrailService
from otel_audit.integrations import asgi, wsgi
from otel_audit.integrations.asgi import AuditContextMiddleware, RequestIdentity
from otel_audit.mapping import attributes_to_fields, record_to_attributes
from otel_audit.otel import AuditLogRecordProcessor, AuditSpanProcessor

CHAIN = [{"principal": "alice", "via": "oauth_token_exchange"},
         {"principal": "svc-reports", "via": "service_account"}]
IDENTITY = RequestIdentity(user_id="svc-reports", user_email="svc@example.com",
                           team_id="platform", auth_method="oauth", acting_as="alice",
                           delegation_chain=CHAIN)


def _identity(rec: Any) -> tuple[Any, ...]:
    return (rec.user_id, rec.auth_method, rec.acting_as, rec.delegation_chain)


# ------------------------------------------------------------------ request middleware

def _asgi_app(trail: AuditTrail, resolver: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AuditContextMiddleware, user_resolver=resolver)

    @app.post("/reports/{report_id}/run")
    async def run(report_id: str) -> dict[str, str]:
        trail.record("EXECUTE", resource_type="report", resource_id=report_id)
        trail.record("EXPORT", resource_type="report", resource_id=report_id,
                     auth_method="mtls", delegation_chain=[])  # the call's own values win
        return {}

    return app


@pytest.mark.parametrize("kind", ["identity", "mapping", "coroutine"])
def test_asgi_resolver_supplies_identity(trail: AuditTrail, kind: str) -> None:
    def plain(scope: Any) -> Any:
        return IDENTITY if kind == "identity" else {
            "user_id": "svc-reports", "user_email": "svc@example.com", "team_id": "platform",
            "auth_method": "oauth", "acting_as": "alice", "delegation_chain": CHAIN}

    async def coroutine(scope: Any) -> RequestIdentity:
        return IDENTITY

    with TestClient(_asgi_app(trail, coroutine if kind == "coroutine" else plain)) as client:
        assert client.post("/reports/r-1/run").status_code == 200
    by_action = {r.action: r for r in trail.records()}
    run = by_action["EXECUTE"]
    assert _identity(run) == ("svc-reports", "oauth", "alice", CHAIN)
    assert (run.user_email, run.team_id) == ("svc@example.com", "platform")
    assert _identity(by_action["EXPORT"]) == ("svc-reports", "mtls", "alice", [])


def test_asgi_resolver_returning_a_user_id_still_works(trail: AuditTrail) -> None:
    with TestClient(_asgi_app(trail, lambda scope: 42)) as client:
        client.post("/reports/r-2/run")
    run = next(r for r in trail.records() if r.action == "EXECUTE")
    assert _identity(run) == ("42", None, None, None)


def test_unknown_resolver_keys_are_ignored_and_logged(
        trail: AuditTrail, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_internal_error, "interval", 0.0)  # every time, not once a while
    resolver = {"user_id": "u1", "auth_method": "api_key", "role": "admin"}
    with caplog.at_level(logging.WARNING), \
            TestClient(_asgi_app(trail, lambda scope: resolver)) as client:
        assert client.post("/reports/r-3/run").status_code == 200
    run = next(r for r in trail.records() if r.action == "EXECUTE")
    assert _identity(run) == ("u1", "api_key", None, None)
    assert "unknown keys ['role']" in caplog.text


def test_a_failing_identity_mapping_is_an_unknown_caller(trail: AuditTrail) -> None:
    class Hostile(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            raise RuntimeError("boom")

    with TestClient(_asgi_app(trail, lambda scope: Hostile(user_id="x"))) as client:
        assert client.post("/reports/r-4/run").status_code == 200
    run = next(r for r in trail.records() if r.action == "EXECUTE")
    assert (run.auth_method, run.delegation_chain) == (None, None)


def _wsgi_call(app: Callable[..., Iterable[bytes]]) -> bytes:
    env: dict[str, Any] = {"REQUEST_METHOD": "POST", "PATH_INFO": "/x"}
    setup_testing_defaults(env)
    result = app(env, lambda status, headers, exc_info=None: (lambda data: None))
    return b"".join(result)


def test_wsgi_resolver_supplies_identity(trail: AuditTrail) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        trail.record("EXPORT", resource_type="report", resource_id="r-1")  # while streaming

    body = _wsgi_call(wsgi.AuditContextMiddleware(app, user_resolver=lambda environ: {
        "user_id": "svc-reports", "auth_method": "oauth", "delegation_chain": CHAIN}))
    assert body == b"a"
    (rec,) = trail.records()
    assert _identity(rec) == ("svc-reports", "oauth", None, CHAIN)
    assert asgi.RequestIdentity is wsgi.RequestIdentity


def test_request_scope_and_explicit_values(trail: AuditTrail) -> None:
    with request_scope(RequestContext(user_id="svc", auth_method="oauth",
                                      delegation_chain=CHAIN)):
        trail.record("READ")
        trail.record("UPDATE", user_id="other", auth_method="password", delegation_chain=None)
    by_action = {r.action: r for r in trail.records()}
    assert _identity(by_action["READ"]) == ("svc", "oauth", None, CHAIN)
    # None means "not given": the request's values fill in, as for every other field
    assert _identity(by_action["UPDATE"]) == ("other", "password", None, CHAIN)


# ------------------------------------------------------------------ OpenTelemetry doors

def test_attributes_map_both_ways(trail: AuditTrail) -> None:
    attrs = {"audit.action": "READ", "user.id": "svc", "audit.auth.method": "oauth",
             "audit.delegation_chain": json.dumps(CHAIN)}
    fields = attributes_to_fields(attrs)
    assert (fields["auth_method"], fields["delegation_chain"]) == ("oauth", CHAIN)
    # a list of maps (an OTLP array of kvlists) is taken as it is
    assert attributes_to_fields({"audit.delegation_chain": CHAIN})["delegation_chain"] == CHAIN
    rec = trail.build_record("READ", user_id="svc", auth_method="oauth",
                             delegation_chain=CHAIN)
    out = record_to_attributes(rec)
    assert out["audit.auth.method"] == "oauth"
    assert out["audit.delegation_chain"] == json.dumps(CHAIN, separators=(",", ":"))
    back = attributes_to_fields(out)
    assert (back["auth_method"], back["delegation_chain"]) == ("oauth", CHAIN)
    plain = record_to_attributes(trail.build_record("READ", user_id="svc"))
    assert "audit.auth.method" not in plain and "audit.delegation_chain" not in plain


def test_span_and_inheriting_span_events(trail: AuditTrail,
                                         make_tracing: Callable[..., Tracing]) -> None:
    tracing = make_tracing()
    tracing.provider.add_span_processor(AuditSpanProcessor(trail))
    with tracing.tracer.start_as_current_span("run report", attributes={
            "audit.action": "EXECUTE", "user.id": "svc-reports", "audit.auth.method": "oauth",
            "audit.acting_as": "alice",
            "audit.delegation_chain": json.dumps(CHAIN)}) as span:
        span.add_event("audit", {"audit.action": "EXPORT"})  # inherits who and how
        span.add_event("audit", {"audit.action": "READ", "audit.auth.method": "mtls",
                                 "audit.delegation_chain": "[]"})
    trail.flush()
    by_action = {r.action: r for r in trail.records()}
    assert _identity(by_action["EXECUTE"]) == ("svc-reports", "oauth", "alice", CHAIN)
    assert _identity(by_action["EXPORT"]) == ("svc-reports", "oauth", "alice", CHAIN)
    assert _identity(by_action["READ"]) == ("svc-reports", "mtls", "alice", [])


def test_logs_sdk_in_both_directions(make_trail: Callable[..., AuditTrail],
                                     logs: Logs) -> None:
    trail = make_trail(emit_otel_logs=True, logger_provider=logs.provider)
    sent = trail.record("UPDATE", user_id="svc-reports", auth_method="oauth",
                        delegation_chain=CHAIN)
    assert sent is not None
    trail.flush()
    (exported,) = logs.exporter.get_finished_logs()
    attrs = dict(exported.log_record.attributes or {})
    assert attrs["audit.auth.method"] == "oauth"
    assert json.loads(attrs["audit.delegation_chain"]) == CHAIN
    # the emitted attributes, read by the Logs SDK processor of another trail
    receiver = make_trail()
    logs.provider.add_log_record_processor(AuditLogRecordProcessor(receiver))
    del attrs["audit.record_id"]  # a new record, not the back-link of an existing one
    logs.logger.emit(event_name="audit", attributes=attrs)
    receiver.flush()
    got = [r for r in receiver.records() if r.id != sent.id]  # one store, two trails
    assert [_identity(r) for r in got] == [("svc-reports", "oauth", None, CHAIN)]


# ------------------------------------------------------------------ compatibility API

def test_compat_takes_the_upstream_parameter_names(trail: AuditTrail) -> None:
    service = AuditTrailService(trail)
    rec = service.log_action("EXECUTE", "tool", "t-1", "svc-reports", auth_method="oauth",
                             acting_as="alice", delegation_chain=CHAIN)
    assert rec is not None and _identity(rec) == ("svc-reports", "oauth", "alice", CHAIN)
    crud = service.log_crud_operation("DELETE", "tool", "t-1", "svc-reports",
                                      auth_method="api_key", delegation_chain=CHAIN)
    access = service.log_data_access("user", "u-1", "svc-reports", auth_method="mtls",
                                     acting_as="bob")
    audit = service.log_audit("svc-reports", "tool", "t-2", "READ", description="x",
                              delegation_chain=CHAIN)
    assert crud is not None and access is not None and audit is not None
    assert _identity(crud) == ("svc-reports", "api_key", None, CHAIN)
    assert _identity(access) == ("svc-reports", "mtls", "bob", None)
    assert _identity(audit) == ("svc-reports", None, None, CHAIN)
    trail.flush()
    stored = {r.id: _identity(r) for r in trail.records()}
    assert stored[rec.id] == _identity(rec) and stored[crud.id] == _identity(crud)


def test_every_mapped_attribute_is_documented() -> None:
    page = (Path(__file__).parents[2] / "docs" / "attribute-mapping.md").read_text()
    for field, names in mapping.FIELD_ATTRIBUTES.items():
        for name in names:
            assert f"`{name}`" in page, name
            assert f"``{name}``" in (mapping.__doc__ or ""), name
        assert f"`{field}`" in page, field
