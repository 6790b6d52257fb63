"""Slow, stalled and wrong clients against a real uvicorn server on 127.0.0.1.

The server runs in this process (``serve_in_thread``), so the tests can order events
with the app's counters and with gates inside the request path, never with timing.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from google.protobuf import json_format
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
from otel_audit.server import IngestApp, otlp, serve_in_thread

HEADERS = (b"POST /v1/logs HTTP/1.1\r\nHost: test\r\n"
           b"Content-Type: application/x-protobuf\r\nContent-Length: 100000\r\n\r\n")


def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (bounded: gives up after a minute)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


@contextmanager
def _server(app: IngestApp) -> Iterator[tuple[httpx.Client, tuple[str, int]]]:
    with serve_in_thread(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as c:
        parts = urlsplit(base_url)
        assert parts.hostname and parts.port
        yield c, (parts.hostname, parts.port)


def _slow_client(address: tuple[str, int]) -> socket.socket:
    """A client that sends its headers and a first byte of a 100 kB body, then stalls."""
    sock = socket.create_connection(address, timeout=60)
    sock.sendall(HEADERS + b"\x0a")
    return sock


def _response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection.

    A server that closes while a trickling client's bytes are still unread in its
    buffer ends the connection with a reset rather than a FIN: what it sent before
    is still delivered first, so a reset after data ends the answer too.
    """
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            if data:
                return data
            raise
        if not chunk:
            return data
        data += chunk


def test_stalled_bodies_do_not_take_the_writers_slots(make_app: Callable[..., IngestApp],
                                                      ingest_trail: AuditTrail) -> None:
    # one writer slot and eight clients stalled in their bodies: the old receiver gave
    # them the slot before reading, so every other request got 503
    app = make_app(max_inflight=1, body_timeout=3600)
    body = protobuf_body(log_request(audit_logs(3)))
    with _server(app) as (client, address):
        slow = [_slow_client(address) for _ in range(8)]
        try:
            _until(lambda: app.stats.requests >= 8, "the stalled requests to arrive")
            for _ in range(3):  # other clients are served meanwhile
                r = client.post("/v1/logs", content=body, headers=PROTOBUF_GZIP)
                assert r.status_code == 200, r.content
            assert client.get("/healthz").json()["unavailable"] == 0
        finally:
            for sock in slow:
                sock.close()
    assert len(ingest_trail.records()) == 3


def test_a_body_not_received_in_time_is_503_and_the_connection_closed(
        make_app: Callable[..., IngestApp], ingest_trail: AuditTrail) -> None:
    app = make_app(max_inflight=1, body_timeout=0.5, retry_after=4)
    stop = threading.Event()
    with _server(app) as (client, address):
        trickling = _slow_client(address)

        def trickle() -> None:  # a byte at a time: the deadline covers the whole body
            while not stop.wait(0.05):
                try:
                    trickling.sendall(b"\x00")
                except OSError:
                    return

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        try:
            answer = _response(trickling)
        finally:
            stop.set()
            feeder.join(30)
            trickling.close()
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 503"), answer[:200]
        assert b"retry-after: 4" in head
        assert b"connection: close" in head
        health = client.get("/healthz").json()
        assert (health["body_timeouts"], health["unavailable"]) == (1, 1)
        # the receiver goes on serving
        r = client.post("/v1/logs", content=protobuf_body(log_request(audit_logs(1))),
                        headers=PROTOBUF_GZIP)
        assert r.status_code == 200
    assert len(ingest_trail.records()) == 1


def test_healthz_answers_while_a_large_body_is_parsed(
        make_app: Callable[..., IngestApp], ingest_trail: AuditTrail,
        monkeypatch: pytest.MonkeyPatch) -> None:
    parsing, release = threading.Event(), threading.Event()
    real_decode = otlp.decode_request

    def gated_decode(body: bytes, media: str) -> Any:
        parsing.set()
        release.wait(60)  # held until /healthz has answered (a deadlock breaker only)
        return real_decode(body, media)

    monkeypatch.setattr(otlp, "decode_request", gated_decode)
    document = json_format.MessageToDict(log_request(audit_logs(2000)))
    for record in document["resourceLogs"][0]["scopeLogs"][0]["logRecords"]:
        record.update(traceId=TRACE_ID, spanId=SPAN_ID)  # OTLP/JSON spells IDs in hex
    body = json.dumps(document)
    big: dict[str, Any] = {}
    with running(make_app()) as client:
        def post_big() -> None:
            big["response"] = client.post("/v1/logs", content=body,
                                          headers={"content-type": "application/json"})

        poster = threading.Thread(target=post_big)
        poster.start()
        try:
            assert parsing.wait(60)
            # parsing runs on a worker thread: the event loop still answers (on the
            # loop, this request would wait for the parse and time out)
            health = client.get("/healthz", timeout=10)
            assert health.status_code == 200
            assert "response" not in big  # healthz completed before the big request
        finally:
            release.set()
            poster.join(60)
    assert big["response"].status_code == 200
    assert len(ingest_trail.records(limit=5000)) == 2000


def test_unexpected_errors_are_503_not_500(make_app: Callable[..., IngestApp],
                                           monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    from otel_audit.server import app as app_module

    def broken(*_args: object) -> None:
        raise RuntimeError("a bug in the receiver")

    monkeypatch.setattr(app_module, "records_from_request", broken)
    with running(make_app(retry_after=9)) as client, caplog.at_level(logging.ERROR):
        r = client.post("/v1/logs", content=protobuf_body(log_request(audit_logs(1))),
                        headers=PROTOBUF_GZIP)
        assert r.status_code == 503  # the Collector keeps the batch and retries
        assert r.headers["retry-after"] == "9"
        assert client.get("/healthz").json()["internal_errors"] == 1
    assert any("a bug in the receiver" in (rec.exc_text or "") for rec in caplog.records)


def test_refusals_are_logged_with_the_peer(make_app: Callable[..., IngestApp],
                                           caplog: pytest.LogCaptureFixture) -> None:
    with running(make_app()) as client, caplog.at_level(logging.ERROR, "otel_audit"):
        for _ in range(3):
            r = client.post("/v1/logs", content=b"\xff\xff",
                            headers={"content-type": "application/x-protobuf"})
            assert r.status_code == 400
        assert client.post("/v1/logs", content=b"x",
                           headers={"content-type": "text/plain"}).status_code == 415
        assert client.get("/healthz").json()["client_errors"] == 4
    refused = [rec.getMessage() for rec in caplog.records if "refused" in rec.getMessage()]
    # one line per kind of refusal a minute, naming the peer and the status
    assert len(refused) == 2, refused
    assert all("127.0.0.1:" in line and "drops the batch" in line for line in refused)
    assert [" 400 " in refused[0], " 415 " in refused[1]] == [True, True]


def test_an_empty_bearer_token_is_logged_loudly_once_a_minute(
        make_app: Callable[..., IngestApp], caplog: pytest.LogCaptureFixture) -> None:
    body = protobuf_body(log_request(audit_logs(1)))
    with _server(make_app(token="s3cret")) as (client, address), \
            caplog.at_level(logging.ERROR):
        # what a Collector sends when its OTEL_AUDIT_SERVER_TOKEN is unset (raw: httpx
        # refuses a header value that ends in a space)
        for value in (b"Bearer ", b"Bearer", b"bearer  "):
            with socket.create_connection(address, timeout=60) as sock:
                sock.sendall(b"POST /v1/logs HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                             b"Content-Type: application/x-protobuf\r\n"
                             b"Content-Encoding: gzip\r\nAuthorization: " + value +
                             b"\r\nContent-Length: " + str(len(body)).encode() +
                             b"\r\n\r\n" + body)
                assert _response(sock).startswith(b"HTTP/1.1 401 ")
        r = client.post("/v1/logs", content=body,
                        headers={**PROTOBUF_GZIP, "authorization": "Bearer wrong"})
        assert r.status_code == 401
        health = client.get("/healthz").json()
        assert (health["auth"], health["client_errors"]) == ("configured", 4)
    hints = [rec for rec in caplog.records if "OTEL_AUDIT_SERVER_TOKEN" in rec.getMessage()]
    assert len(hints) == 1  # three empty tokens, one line
    assert hints[0].levelno == logging.ERROR
    assert "empty bearer token" in hints[0].getMessage()
    assert "127.0.0.1:" in hints[0].getMessage()
    # a wrong token is a different problem, with its own line
    wrong = [rec for rec in caplog.records if "invalid bearer token" in rec.getMessage()]
    assert len(wrong) == 1


def test_auth_state_is_announced_at_startup_and_on_healthz(
        make_app: Callable[..., IngestApp], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "otel_audit"):
        with running(make_app()) as client:
            assert client.get("/healthz").json()["auth"] == "disabled"
        with running(make_app(token="t")) as client:
            health = client.get("/healthz").json()
            assert health["auth"] == "configured"
            assert health["max_body_bytes"] == 16 * 1024 * 1024
            assert health["body_timeout"] == 30.0
    lines = [(rec.levelno, rec.getMessage()) for rec in caplog.records
             if "authentication" in rec.getMessage()]
    assert lines[0][0] == logging.WARNING and "DISABLED" in lines[0][1]
    assert lines[1][0] == logging.INFO and "configured" in lines[1][1]


def test_json_error_bodies_for_json_requests(client: httpx.Client) -> None:
    r = client.post("/v1/logs", content=b"[1, 2",
                    headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert json.loads(r.content)["code"] == 3


def test_a_post_to_another_path_is_logged(make_app: Callable[..., IngestApp],
                                          caplog: pytest.LogCaptureFixture) -> None:
    with running(make_app()) as client, caplog.at_level(logging.ERROR, "otel_audit"):
        assert client.get("/favicon.ico").status_code == 404  # a probe: not logged
        for _ in range(2):  # e.g. a Collector sending traces, or a path typo
            assert client.post("/v1/traces", content=b"x").status_code == 404
        assert client.get("/healthz").json()["client_errors"] == 2
    lines = [rec.getMessage() for rec in caplog.records if "404" in rec.getMessage()]
    assert len(lines) == 1
    assert "/v1/traces" in lines[0] and "127.0.0.1:" in lines[0]
