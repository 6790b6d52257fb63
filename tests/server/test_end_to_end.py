"""Real sockets, the official OTLP/HTTP exporter, several processes, a store outage."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from otlp_client import emit
from sqlalchemy import func, select

from otel_audit import AuditTrail
from otel_audit.server import IngestApp, serve_in_thread
from otel_audit.store.schema import audit_trails
from otel_audit.testing import InMemoryAuditExporter

CLIENT = Path(__file__).with_name("otlp_client.py")


def _stored(trail: AuditTrail) -> dict[str, set[str]]:
    """service name -> trace IDs of every stored row (all rows must carry one)."""
    t = audit_trails.c
    with trail.writer.engine.connect() as conn:
        rows = conn.execute(select(t.service_name, t.trace_id, t.span_id)).all()
    out: dict[str, set[str]] = {}
    for service, trace_id, span_id in rows:
        assert trace_id and len(trace_id) == 32 and span_id and len(span_id) == 16
        out.setdefault(service, set()).add(trace_id)
    return out


def _count(trail: AuditTrail) -> int:
    with trail.writer.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(audit_trails)) or 0)


def test_official_exporter_from_real_spans(make_app: Callable[..., IngestApp],
                                           ingest_trail: AuditTrail) -> None:
    app = make_app(token="t0ken")
    with serve_in_thread(app) as base_url:
        trace_ids, flushed = emit(f"{base_url}/v1/logs", "checkout", 120, token="t0ken",
                                  batch_size=50)
    assert flushed
    assert _stored(ingest_trail) == {"checkout": trace_ids}
    assert _count(ingest_trail) == 120
    stats = app.stats.as_dict()
    assert stats["accepted_records"] == 120
    assert stats["rejected_records"] == 12  # the plain application logs, reported back
    assert stats["unavailable"] == 0
    rows = ingest_trail.records(action="DELETE", limit=1)
    assert rows[0].new_values == {"deleted": True}
    assert rows[0].resource_type == "tool"


def test_four_client_processes_at_once(make_app: Callable[..., IngestApp],
                                       ingest_trail: AuditTrail) -> None:
    per_client = 300
    with serve_in_thread(make_app()) as base_url:
        procs = [subprocess.Popen(
            [sys.executable, str(CLIENT), f"{base_url}/v1/logs", f"svc-{n}", str(per_client)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(4)]
        outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    expected = {f"svc-{n}": set(out.split()) for n, (out, _err) in enumerate(outputs)}
    assert all(len(ids) == per_client for ids in expected.values())
    assert _stored(ingest_trail) == expected
    assert _count(ingest_trail) == 4 * per_client


def test_store_outage_clients_retry_and_nothing_is_lost(
        make_trail: Callable[..., AuditTrail]) -> None:
    exporter = InMemoryAuditExporter()
    exporter.fail_all()  # the destination is down
    app = IngestApp(make_trail(service_name="ingest", exporter=exporter), ack_mode="sync",
                    retry_after=1)
    result: dict[str, object] = {}
    with serve_in_thread(app) as base_url:
        client = threading.Thread(target=lambda: result.update(
            zip(("ids", "flushed"),
                emit(f"{base_url}/v1/logs", "ledger", 40, batch_size=10), strict=True)))
        client.start()
        assert exporter.wait_for_calls(1, timeout=60)  # the clients have been told 503
        exporter.recover()  # the destination comes back; the clients retry after Retry-After
        client.join(120)
    assert result["flushed"] is True
    assert app.stats.as_dict()["unavailable"] >= 1
    records = exporter.get_finished_records()
    assert {r.service_name for r in records} == {"ledger"}
    assert {r.trace_id for r in records} == result["ids"]
    assert len(records) == 40


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(make_app: Callable[..., IngestApp], ingest_trail: AuditTrail,
             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets these override a session's CA file (psf/requests#3829)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    with serve_in_thread(make_app(token="tls-token"), tls_cert=str(cert),
                         tls_key=str(key)) as base_url:
        assert base_url.startswith("https://")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as client:
            assert client.get(f"{base_url}/healthz").status_code == 200
        _, flushed = emit(f"{base_url}/v1/logs", "secure", 5, token="tls-token",
                          certificate_file=str(cert))
    assert flushed
    assert _count(ingest_trail) == 5
