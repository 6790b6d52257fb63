"""The Collector configurations in collector-config/: structure, endpoints, validation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_audit.mapping import AUDIT_EVENT_NAME

CONFIG_DIR = Path(__file__).resolve().parent.parent / "collector-config"
FILES = ("agent.yaml", "audit-gateway.yaml")


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CONFIG_DIR / name).read_text())
    assert isinstance(data, dict)
    return data


def _readme_endpoints() -> dict[tuple[str, str], tuple[str, str]]:
    """(file, exporter) -> (endpoint, env var) from the README's endpoint table."""
    rows = {}
    for line in (CONFIG_DIR / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*`([\w.-]+\.yaml)`\s*\|\s*`([\w/]+)`\s*\|\s*`([^`]+)`\s*\|\s*`(\w+)`",
                     line)
        if m:
            rows[(m.group(1), m.group(2))] = (m.group(3), m.group(4))
    return rows


@pytest.mark.parametrize("name", FILES)
def test_every_component_in_a_pipeline_is_defined(name: str) -> None:
    config = _load(name)
    connectors = set(config.get("connectors") or {})
    defined = {
        "receivers": set(config.get("receivers") or {}) | connectors,
        "processors": set(config.get("processors") or {}),
        "exporters": set(config.get("exporters") or {}) | connectors,
    }
    service = config["service"]
    assert set(service["extensions"]) <= set(config["extensions"])
    used: set[str] = set()
    for pipeline_name, pipeline in service["pipelines"].items():
        assert pipeline["receivers"] and pipeline["exporters"], pipeline_name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in defined[kind], f"{name}: {pipeline_name} uses {component}"
                used.add(component)
        if pipeline.get("processors"):
            assert pipeline["processors"][0] == "memory_limiter", pipeline_name
    # nothing defined and forgotten; connectors are used on both sides
    declared = defined["receivers"] | defined["processors"] | defined["exporters"]
    assert declared == used
    for conn in connectors:
        for route in config["connectors"][conn].get("table", []):
            assert set(route["pipelines"]) <= set(service["pipelines"])
        assert set(config["connectors"][conn].get("default_pipelines", [])) <= set(
            service["pipelines"])


@pytest.mark.parametrize("name", FILES)
def test_exporters_point_where_the_readme_says_and_queue_durably(name: str) -> None:
    config = _load(name)
    documented = _readme_endpoints()
    exporters = config["exporters"]
    assert {exp for (file, exp) in documented if file == name} == set(exporters)
    for exporter, settings in exporters.items():
        endpoint, env = documented[(name, exporter)]
        assert settings["endpoint"] == f"${{env:{env}:-{endpoint}}}"
    for settings in exporters.values():
        queue = settings.get("sending_queue")
        if queue is None:
            continue  # the ordinary log backend: best effort
        storage = queue["storage"]
        assert storage in config["service"]["extensions"]
        assert config["extensions"][storage]["fsync"] is True
        assert settings["retry_on_failure"]["max_elapsed_time"] == 0


def test_gateway_routes_audit_records_to_the_ingest_server() -> None:
    config = _load("audit-gateway.yaml")
    (route,) = config["connectors"]["routing"]["table"]
    assert route["context"] == "log"
    # the condition itself is held to otel_audit.mapping.is_audit in
    # tests/collector/test_collector_routing.py
    assert f'event_name == "{AUDIT_EVENT_NAME}"' in route["condition"]
    assert 'attributes["audit.action"] != nil' in route["condition"]
    pipelines = config["service"]["pipelines"]
    (audit_pipeline,) = route["pipelines"]
    assert pipelines[audit_pipeline]["exporters"] == ["otlphttp/audit"]
    # no batch processor on the audit route: batching is the exporter's, after its
    # persistent queue (tests/collector/test_collector_schema.py holds the rule)
    assert not any(p.startswith("batch") for p in pipelines[audit_pipeline].get("processors", []))
    exporter = config["exporters"]["otlphttp/audit"]
    assert exporter["auth"]["authenticator"] == "bearertokenauth/audit"
    assert config["extensions"]["bearertokenauth/audit"]["token"] == (
        "${env:OTEL_AUDIT_SERVER_TOKEN}")
    assert exporter["sending_queue"]["enabled"] is True
    # other logs go to the default pipeline, not the trail
    assert config["connectors"]["routing"]["default_pipelines"] == ["logs/default"]


def test_readme_names_the_target_collector_version() -> None:
    readme = (CONFIG_DIR / "README.md").read_text()
    version = re.search(r"otelcol-contrib v(\d+\.\d+\.\d+)", readme)
    assert version
    for name in FILES:
        assert f"otelcol-contrib v{version.group(1)}" in (CONFIG_DIR / name).read_text()


@pytest.mark.skipif(shutil.which("otelcol-contrib") is None,
                    reason="otelcol-contrib is not on PATH")
@pytest.mark.parametrize("name", FILES)
def test_otelcol_contrib_validates(name: str, tmp_path: Path) -> None:
    env = {"OTEL_AUDIT_SERVER_TOKEN": "validate", "AUDIT_QUEUE_DIR": str(tmp_path),
           "AGENT_QUEUE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [shutil.which("otelcol-contrib") or "otelcol-contrib", "validate",
         f"--config={CONFIG_DIR / name}"],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("otelcol-contrib") is None,
                    reason="otelcol-contrib is not on PATH")
def test_otelcol_contrib_refuses_the_gateway_without_a_token(tmp_path: Path) -> None:
    env = {"AUDIT_QUEUE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [shutil.which("otelcol-contrib") or "otelcol-contrib", "validate",
         f"--config={CONFIG_DIR / 'audit-gateway.yaml'}"],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode != 0
    assert "no bearer token provided" in result.stderr


def test_readme_loss_table_covers_every_hop_and_failure() -> None:
    readme = (CONFIG_DIR / "README.md").read_text()
    section = readme.split("## Loss semantics, hop by hop", 1)[1]
    hops = re.findall(r"^### (.+)$", section, re.M)
    assert [hop.split(" — ")[0] for hop in hops] == [
        "Service (SDK) → agent", "Agent → gateway", "Inside the gateway",
        "Gateway → `otel-audit serve`", "`otel-audit serve` → PostgreSQL"]
    tables = re.split(r"^### .+$", section, flags=re.M)[1:]
    for hop, table in zip(hops, tables, strict=True):
        rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
        assert rows, hop
        for row in rows:
            assert row.count("|") == 4, (hop, row)  # failure | outcome | behind it
    for failure in ("crash", "disk full", "queue full", "timeout", "oversized", "401",
                    "413", "400", "503", "404"):
        assert failure in section, failure
