"""``otel-audit serve`` as a process: token from the environment, graceful shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from otlp_helpers import PROTOBUF_GZIP, TRACE_ID, audit_logs, log_request, protobuf_body

from otel_audit import AuditTrail
from otel_audit.errors import ConfigError
from otel_audit.server import TOKEN_ENV, resolve_token

OTEL_AUDIT = Path(sys.executable).with_name("otel-audit")


def test_serve_process_receives_and_flushes_on_sigterm(sqlite_url: str, tmp_path: Path) -> None:
    env = {**os.environ, TOKEN_ENV: "from-the-environment"}
    proc = subprocess.Popen(
        [str(OTEL_AUDIT), "serve", "--db", sqlite_url, "--port", "0"],
        env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stderr is not None
        base_url = None
        for line in proc.stderr:  # uvicorn announces the port once it listens
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if match:
                base_url = match.group(1)
                break
        assert base_url, "the server did not start"
        body = protobuf_body(log_request(audit_logs(3)))
        with httpx.Client(base_url=base_url, timeout=30) as client:
            assert client.post("/v1/logs", content=body,
                               headers=PROTOBUF_GZIP).status_code == 401
            r = client.post("/v1/logs", content=body, headers={
                **PROTOBUF_GZIP, "authorization": "Bearer from-the-environment"})
            assert r.status_code == 200
            assert client.get("/healthz").json()["accepted_records"] == 3
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        # uvicorn re-raises the signal once it has shut down gracefully
        assert proc.returncode in (0, -signal.SIGTERM), rest
        assert "Application shutdown complete" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    trail = AuditTrail(sqlite_url, mode="sync")
    try:
        assert len(trail.records(trace_id=TRACE_ID)) == 3
    finally:
        trail.shutdown()


def test_token_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token("direct") == "direct"
    assert resolve_token(None, secret) == "from-a-file"
    assert resolve_token() == "from-env"
    monkeypatch.delenv(TOKEN_ENV)
    assert resolve_token() is None
    with pytest.raises(ConfigError):
        resolve_token("direct", secret)
    with pytest.raises(ConfigError):
        resolve_token(None, tmp_path / "missing")
