"""``otel-audit serve`` as a process: token from the environment, graceful shutdown."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from otlp_helpers import PROTOBUF_GZIP, TRACE_ID, audit_logs, log_request, protobuf_body
from typer.testing import CliRunner

from otel_audit import AuditTrail
from otel_audit.cli import app as cli_app
from otel_audit.cli import serve as serve_cli
from otel_audit.cli.serve import ACK_MODES
from otel_audit.config import MODES
from otel_audit.errors import ConfigError
from otel_audit.server import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    TOKEN_ENV,
    resolve_token,
)

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


# ----------------------------------------------------------------- refusing to start


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Stop ``serve`` where uvicorn would start serving; lists the servers it would run."""
    started: list[object] = []
    monkeypatch.setattr("uvicorn.Server.run", lambda self, *a, **k: started.append(self))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    return started


def _serve(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli_app, ["serve", *args], env=env)


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_missing_or_unusable_tls_files_are_one_line(no_run: list[object],
                                                    tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    missing = str(tmp_path / "missing.pem")
    line = _one_line_error(_serve("--db", db, "--tls-cert", missing, "--tls-key", missing))
    assert f"cannot read the TLS certificate {missing}" in line
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    line = _one_line_error(_serve("--db", db, "--tls-cert", str(garbage),
                                  "--tls-key", str(garbage)))
    assert "not a usable PEM pair" in line
    assert "needs both" in _one_line_error(_serve("--db", db, "--tls-cert", str(garbage)))
    assert no_run == []


def test_non_loopback_without_a_token_is_refused_unless_insecure(
        no_run: list[object], tmp_path: Path) -> None:
    db_file = tmp_path / "a.db"
    db = f"sqlite:///{db_file}"
    for host in ("0.0.0.0", "::", "10.1.2.3", "audit.internal"):
        line = _one_line_error(_serve("--db", db, "--host", host, "--port", "0"))
        assert f"refusing to listen on {host} without a bearer token" in line
        assert "--insecure" in line
    assert not db_file.exists()  # refused before the store was opened
    assert no_run == []
    result = _serve("--db", db, "--host", "0.0.0.0", "--port", "0", "--insecure")
    assert result.exit_code == 0, result.output
    assert "WARNING: authentication DISABLED on 0.0.0.0 (--insecure)" in result.stderr
    result = _serve("--db", db, "--host", "0.0.0.0", "--port", "0",
                    env={TOKEN_ENV: "s3cret"})
    assert result.exit_code == 0, result.output
    assert "authentication: bearer token required" in result.stderr
    result = _serve("--db", db, "--host", "localhost", "--port", "0")
    assert result.exit_code == 0, result.output
    assert "authentication: DISABLED" in result.stderr
    assert len(no_run) == 3


def test_ack_mode_choices_are_the_acknowledging_modes(no_run: list[object],
                                                      tmp_path: Path) -> None:
    result = _serve("--db", f"sqlite:///{tmp_path / 'a.db'}", "--ack-mode", "bogus")
    assert result.exit_code == 2
    assert "'durable', 'sync'" in result.output and "async" not in result.output
    assert tuple(mode for mode in MODES if mode != "async") == ACK_MODES
    for mode in ACK_MODES:
        result = _serve("--db", f"sqlite:///{tmp_path / (mode + '.db')}", "--port", "0",
                        "--ack-mode", mode)
        assert result.exit_code == 0, result.output
        assert f"ack after {mode}" in result.stderr
    assert no_run == [no_run[0], no_run[1]]


def test_cli_defaults_are_the_servers() -> None:
    assert serve_cli.MAX_BODY_BYTES == DEFAULT_MAX_BODY_BYTES
    assert serve_cli.BODY_TIMEOUT == DEFAULT_BODY_TIMEOUT


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_an_encrypted_tls_key_is_refused_not_prompted_for(no_run: list[object],
                                                          tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-days", "1", "-subj", "/CN=127.0.0.1", "-passout", "pass:secret",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    line = _one_line_error(_serve("--db", f"sqlite:///{tmp_path / 'a.db'}", "--tls-cert",
                                  str(cert), "--tls-key", str(key)))
    assert "not a usable PEM pair" in line
    assert no_run == []
