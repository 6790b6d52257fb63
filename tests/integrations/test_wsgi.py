"""``AuditContextMiddleware`` (WSGI): request context, correlation header, streamed bodies."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

from otel_audit import AuditTrail
from otel_audit.integrations.wsgi import AuditContextMiddleware


def _call(app: Callable[..., Iterable[bytes]], **environ: Any) -> tuple[str, dict[str, str],
                                                                          bytes]:
    env: dict[str, Any] = dict(environ)
    setup_testing_defaults(env)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], object]:
        captured["status"], captured["headers"] = status, dict(headers)
        return lambda data: None

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return captured["status"], captured["headers"], body


def _audited_app(trail: AuditTrail) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        trail.record("READ", resource_type="report", resource_id="r-1")
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"part 1;"
        trail.record("EXPORT", resource_type="report", resource_id="r-1")  # while streaming
        yield b"part 2"

    return app


def test_request_context_and_streamed_body(trail: AuditTrail) -> None:
    app = AuditContextMiddleware(_audited_app(trail),
                                 user_resolver=lambda environ: environ.get("HTTP_X_USER"))
    status, headers, body = _call(app, REQUEST_METHOD="POST", PATH_INFO="/reports/r-1",
                                  REMOTE_ADDR="198.51.100.7", HTTP_USER_AGENT="wsgi-agent",
                                  HTTP_X_USER="alice", HTTP_X_CORRELATION_ID="req-9")
    assert (status, body) == ("200 OK", b"part 1;part 2")
    assert headers["X-Correlation-ID"] == "req-9"
    records = trail.records()
    assert sorted(r.action for r in records) == ["EXPORT", "READ"]
    for rec in records:
        assert (rec.user_id, rec.client_ip, rec.user_agent) == ("alice", "198.51.100.7",
                                                                "wsgi-agent")
        assert (rec.request_method, rec.request_path) == ("POST", "/reports/r-1")
        assert rec.correlation_id == "req-9"


def test_invalid_correlation_id_is_replaced(trail: AuditTrail) -> None:
    app = AuditContextMiddleware(_audited_app(trail))
    _, headers, _ = _call(app, HTTP_X_CORRELATION_ID="<script>" * 20)
    replacement = headers["X-Correlation-ID"]
    records = trail.records()
    assert len(records) == 2
    for rec in records:
        assert rec.correlation_id == replacement
        assert rec.context["_correlation_id_replaced"]["reason"] == "too long"


def test_context_does_not_leak_out_of_the_request(trail: AuditTrail) -> None:
    app = AuditContextMiddleware(_audited_app(trail))
    _call(app, HTTP_X_CORRELATION_ID="inside")
    outside = trail.record("READ", user_id="after")
    assert outside is not None
    assert outside.correlation_id != "inside"
    assert outside.client_ip is None
