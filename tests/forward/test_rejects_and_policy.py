"""Permanent refusals land in audit_forward_rejects and the rest flows; field policy;
JSON-lines files rotated by size."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from forward_helpers import engine_of, forward_cli, rows
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from sqlalchemy import select

from otel_audit.forward import FieldPolicy, FileDestination, Forwarder, load_policies
from otel_audit.forward.status import health
from otel_audit.store.schema import audit_forward_rejects


class _Siem:
    """An OTLP endpoint that refuses one record ID for good (400) and answers the very
    first request 503 with Retry-After (a retry), accepting everything else."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.received: list[str] = []
        self.requests = 0
        siem = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportLogsServiceRequest.FromString(body)
                ids = [kv.value.string_value for rl in request.resource_logs
                       for sl in rl.scope_logs for log in sl.log_records
                       for kv in log.attributes if kv.key == "audit.record_id"]
                siem.requests += 1
                if siem.requests == 1:
                    self._answer(503, b"busy", {"Retry-After": "0"})
                elif siem.refused in ids:
                    self._answer(400, b"field too long", {})
                else:
                    siem.received.extend(ids)
                    self._answer(200, b"", {})

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"otlp+http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def siem_for(source: str) -> Iterator[Any]:
    servers: list[_Siem] = []

    def start(refused: str) -> _Siem:
        siem = _Siem(refused)
        threading.Thread(target=siem.server.serve_forever, daemon=True).start()
        servers.append(siem)
        return siem

    yield start
    for siem in servers:
        siem.server.shutdown()
        siem.server.server_close()


def test_one_refused_record_is_recorded_and_the_rest_flows(
        source: str, siem_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    stored = rows(source)
    ordered = sorted(stored)
    refused = ordered[len(ordered) // 3]
    siem = siem_for(refused)
    result = forward_cli("--db", source, "--to", siem.url, "--once", "--batch-size", "40")
    assert "1 rejected" in result.stderr
    assert "refused for good" in result.stderr  # the ERROR log line
    assert sorted(set(siem.received)) == sorted(set(stored) - {refused})
    engine = engine_of(source)
    try:
        with engine.connect() as conn:
            rejects = conn.execute(select(audit_forward_rejects)).mappings().all()
        assert [(r["record_id"], r["destination"]) for r in rejects] == [
            (refused, siem.url)]
        assert "HTTP 400" in rejects[0]["reason"] and "field too long" in rejects[0]["reason"]
        (state,) = health(engine)
        assert state.lag_records == 0 and state.rejected == 1
        assert state.last_error is not None and "503" in state.last_error
    finally:
        engine.dispose()


def test_policy_masks_hashes_and_drops(source: str, tmp_path: Path) -> None:
    config = tmp_path / "forward.toml"
    config.write_text('[destinations.siem]\ndrop = ["user_agent", "old_values"]\n'
                      'mask = ["user_email", "client_ip"]\nhash = ["user_id"]\n'
                      'hash_key_env = "FWD_KEY"\n')
    out = tmp_path / "siem.jsonl"
    forward_cli("--db", source, "--to", f"file://{out}", "--name", "siem", "--config",
                str(config), "--once", env={"FWD_KEY": "k"})
    stored = rows(source)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(stored)
    digests: dict[str, str] = {}
    for doc in lines:
        original = stored[doc["id"]]
        assert doc["user_agent"] is None and doc["old_values"] is None
        assert doc["user_email"] == "***@example.com"
        assert doc["client_ip"] == "***"
        assert doc["user_id"].startswith("hmac-sha256:")
        assert doc["user_id"] != original["user_id"]
        # the same person, the same digest: still joinable
        assert digests.setdefault(original["user_id"], doc["user_id"]) == doc["user_id"]
        assert doc["new_values"] == original["new_values"]  # not named: as stored
    assert len(set(digests.values())) == len(digests) == 7


def test_policy_refuses_unknown_fields_and_fixed_ones(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[destinations.x]\ndrop = ["id"]\n')
    with pytest.raises(ValueError, match="cannot be dropped"):
        load_policies(config)
    with pytest.raises(ValueError, match="cannot be masked"):
        FieldPolicy(mask=frozenset({"no_such_field"}))


def test_file_rotates_by_size(source: str, tmp_path: Path) -> None:
    out = tmp_path / "trail.jsonl"
    engine = engine_of(source)
    try:
        destination = FileDestination(out, max_bytes=20_000, backups=50)
        Forwarder(engine, destination, batch_size=10).run(once=True)
    finally:
        engine.dispose()
    files = sorted(tmp_path.glob("trail.jsonl*"))
    assert len(files) > 3
    assert all(f.stat().st_size <= 20_000 for f in files)
    ids = [json.loads(line)["id"] for f in files for line in f.read_text().splitlines()]
    assert sorted(ids) == sorted(rows(source))
