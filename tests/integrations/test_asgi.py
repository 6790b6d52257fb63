"""``AuditContextMiddleware`` (ASGI) under a FastAPI app and its test client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from otel_capture_helpers import Tracing

from otel_audit import AuditTrail
from otel_audit.integrations.asgi import AuditContextMiddleware


def _app(trail: AuditTrail, tracing: Tracing | None = None, **middleware: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AuditContextMiddleware, **middleware)

    @app.post("/tools/{tool_id}/delete")
    async def delete_tool(tool_id: str) -> dict[str, str]:
        trail.record("DELETE", resource_type="tool", resource_id=tool_id)
        return {"ok": tool_id}

    @app.get("/sync")
    def sync_endpoint() -> dict[str, str]:  # runs in the threadpool
        trail.record("READ", user_id="explicit", client_ip="192.0.2.1")
        return {}

    @app.get("/traced")
    async def traced() -> dict[str, str]:
        assert tracing is not None
        with tracing.tracer.start_as_current_span("handler"):
            trail.record("EXECUTE")
        return {}

    return app


@pytest.fixture
def client(trail: AuditTrail) -> Iterator[TestClient]:
    """A FastAPI app with the middleware resolving the user from a header."""
    app = _app(trail, user_resolver=lambda scope: dict(scope["headers"]).get(b"x-user",
                                                                          b"").decode() or None)
    with TestClient(app) as test_client:
        yield test_client


def test_request_context_is_picked_up(trail: AuditTrail, client: TestClient) -> None:
    response = client.post("/tools/t-1/delete", headers={"x-user": "alice",
                                                         "user-agent": "pytest-agent"})
    assert response.status_code == 200
    (rec,) = trail.records()
    assert (rec.user_id, rec.client_ip, rec.user_agent) == ("alice", "testclient", "pytest-agent")
    assert (rec.request_method, rec.request_path) == ("POST", "/tools/t-1/delete")
    assert rec.resource_id == "t-1"


def test_explicit_arguments_win_and_sync_endpoints_see_context(
    trail: AuditTrail, client: TestClient
) -> None:
    client.get("/sync", headers={"x-user": "alice"})
    (rec,) = trail.records()
    assert (rec.user_id, rec.client_ip, rec.request_path) == ("explicit", "192.0.2.1", "/sync")


def test_valid_correlation_id_is_used_and_echoed(trail: AuditTrail, client: TestClient) -> None:
    response = client.post("/tools/t-2/delete", headers={"X-Correlation-ID": "req-123.A_b"})
    assert response.headers["x-correlation-id"] == "req-123.A_b"
    (rec,) = trail.records()
    assert rec.correlation_id == "req-123.A_b"
    assert rec.trace_id is None


def test_missing_correlation_id_is_generated_and_echoed(trail: AuditTrail,
                                                        client: TestClient) -> None:
    response = client.post("/tools/t-3/delete")
    generated = response.headers["x-correlation-id"]
    (rec,) = trail.records()
    assert rec.correlation_id == generated
    assert "_correlation_id_replaced" not in (rec.context or {})


@pytest.mark.parametrize("bad", ["x" * 65, "drop table;--", "a b", "ünïcode"])
def test_invalid_correlation_id_is_replaced_and_noted(bad: str, trail: AuditTrail,
                                                      client: TestClient) -> None:
    response = client.post("/tools/t-4/delete", headers={"X-Correlation-ID": bad.encode()})
    assert response.status_code == 200
    replacement = response.headers["x-correlation-id"]
    assert replacement != bad and len(replacement) <= 64
    (rec,) = trail.records()
    assert rec.correlation_id == replacement
    note = rec.context["_correlation_id_replaced"]
    assert note["reason"] in {"too long", "invalid characters"}
    assert note["received_length"] >= len(bad)


def test_active_trace_wins_over_the_header(trail: AuditTrail, tracing: Tracing) -> None:
    with TestClient(_app(trail, tracing)) as test_client:
        response = test_client.get("/traced", headers={"X-Correlation-ID": "from-header"})
    (rec,) = trail.records()
    assert rec.trace_id is not None
    assert rec.correlation_id == rec.trace_id
    (span,) = tracing.exporter.get_finished_spans()
    assert rec.trace_id == format(span.context.trace_id, "032x")
    # the response is sent after the handler's span ended: the header's ID is echoed
    assert response.headers["x-correlation-id"] == "from-header"


def test_configurable_header_and_failing_resolver(trail: AuditTrail) -> None:
    def broken(scope: Any) -> str:
        raise RuntimeError("auth backend down")

    app = _app(trail, header_name="X-Request-ID", user_resolver=broken)
    with TestClient(app) as test_client:
        response = test_client.post("/tools/t-5/delete", headers={"X-Request-ID": "rid-1"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "rid-1"
    assert "x-correlation-id" not in response.headers
    (rec,) = trail.records()
    assert (rec.correlation_id, rec.user_id) == ("rid-1", "unknown")


def test_async_user_resolver(trail: AuditTrail) -> None:
    async def resolver(scope: Any) -> str:
        return "async-user"

    with TestClient(_app(trail, user_resolver=resolver)) as test_client:
        test_client.post("/tools/t-6/delete")
    (rec,) = trail.records()
    assert rec.user_id == "async-user"


def test_lifespan_and_other_scopes_pass_through(trail: AuditTrail) -> None:
    with TestClient(_app(trail)) as test_client:  # runs lifespan through the middleware
        assert test_client.get("/openapi.json").status_code == 200
    assert trail.records() == []
