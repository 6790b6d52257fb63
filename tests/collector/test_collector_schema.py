"""Every key of the Collector configurations is a field of otelcol-contrib v0.130.0, and
the configurations keep the rules that make the loss table in collector-config/README.md
true: no acknowledgement before the persistent queue on the audit route, blocking on
overflow, retries without end, request sizes under each next hop's limit, a token that
cannot be empty, a configurable CA, no full-file compaction at start.
"""

from __future__ import annotations

import copy
import inspect
import re
from typing import Any

import pytest
import yaml
from collector_schema import CONFIG_DIR, SCHEMA_PATH, check_config, component_type, expand_env
from collector_schema import load_schema as _load_schema

FILES = ("agent.yaml", "audit-gateway.yaml")
MIB = 1024 * 1024

# Defaults of the components where a configuration leaves the limit out.
GRPC_DEFAULT_MAX_RECV_MIB = 4  # grpc-go's default receive limit (configgrpc leaves 0)
HTTP_DEFAULT_MAX_REQUEST_BODY = 20 * MIB  # confighttp defaultMaxRequestBodySize


# Processors that hand the data to the next consumer on the caller's goroutine and return
# its error, so the receiver answers only after the exporter's queue took the data. The
# batch processor (and any other buffering processor) is not one of them.
SYNCHRONOUS_PROCESSORS = frozenset({"memory_limiter", "resourcedetection"})


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CONFIG_DIR / name).read_text())
    assert isinstance(data, dict)
    return data


# ----------------------------------------------------------------------- the schema


def test_schema_names_the_target_and_the_source_of_every_type() -> None:
    schema = _load_schema()
    readme = (CONFIG_DIR / "README.md").read_text()
    assert schema.target in readme
    assert schema.target in SCHEMA_PATH.name.replace("-v", " v").replace(".yaml", "")
    for name, spec in schema.types.items():
        source = spec.get("source", "")
        assert re.search(r"open-telemetry/opentelemetry-collector(-contrib)? \S+", source), name
    # every type a field refers to is defined
    for name in schema.types:
        for field_type in schema.fields(name).values():
            inner = re.sub(r"^(list|map)\[(.*)\]$", r"\2", field_type)
            assert inner in schema.types or inner in {
                "string", "bool", "int", "float", "duration", "id", "any"}, (name, field_type)


@pytest.mark.parametrize("name", FILES)
def test_every_key_is_a_field_of_the_target_version(name: str) -> None:
    assert check_config(_load(name), _load_schema()) == []


@pytest.mark.parametrize(("mutate", "problem"), [
    (lambda c: c["exporters"]["otlphttp/audit"]["sending_queue"].update(blocking_on_overflow=True),
     "exporters.otlphttp/audit.sending_queue.blocking_on_overflow: unknown field"),
    (lambda c: c["exporters"]["otlphttp/audit"]["sending_queue"]["batch"].update(timeout="1s"),
     "exporters.otlphttp/audit.sending_queue.batch.timeout: unknown field"),
    (lambda c: c["receivers"]["otlp"]["protocols"]["grpc"].update(max_recv_msg_size=8),
     "receivers.otlp.protocols.grpc.max_recv_msg_size: unknown field"),
    (lambda c: c["extensions"]["file_storage/audit"]["compaction"].update(on_start="yes"),
     "extensions.file_storage/audit.compaction.on_start: 'yes' is not a bool"),
    (lambda c: c["exporters"]["otlphttp/audit"].update(timeout="30 seconds"),
     "exporters.otlphttp/audit.timeout: '30 seconds' is not a duration"),
    (lambda c: c["connectors"]["routing"]["table"][0].update(match_once=True),
     "connectors.routing.table[0].match_once: unknown field"),
    (lambda c: c["processors"].update({"transform/x": {}}),
     "processors.transform/x: no component type 'transform'"),
    (lambda c: c["service"]["pipelines"]["logs/audit"].update(exporter=["x"]),
     "service.pipelines.logs/audit.exporter: unknown field"),
])
def test_unknown_or_mistyped_keys_fail_with_their_path(mutate: Any, problem: str) -> None:
    config = copy.deepcopy(_load("audit-gateway.yaml"))
    mutate(config)
    problems = check_config(config, _load_schema())
    assert len(problems) == 1 and problems[0].startswith(problem), problems


# ----------------------------------------------------------------------- the audit route


def _audit_route(config: dict[str, Any]) -> list[str]:
    """Pipelines an audit record passes: all of them on the agent; on the gateway the
    pipelines feeding the routing connector and those its audit route leads to."""
    pipelines = config["service"]["pipelines"]
    connectors = config.get("connectors") or {}
    if not connectors:
        return list(pipelines)
    route = [name for name, p in pipelines.items()
             if any(exp in connectors for exp in p["exporters"])]
    for conn in connectors.values():
        for entry in conn["table"]:
            route.extend(entry["pipelines"])
    return route


def _audit_exporters(config: dict[str, Any]) -> list[str]:
    connectors = config.get("connectors") or {}
    pipelines = config["service"]["pipelines"]
    return [exp for name in _audit_route(config) for exp in pipelines[name]["exporters"]
            if exp not in connectors]


def test_the_gateway_audit_route_is_the_routed_pipeline_and_its_exporter() -> None:
    config = _load("audit-gateway.yaml")
    assert _audit_route(config) == ["logs/in", "logs/audit"]
    assert _audit_exporters(config) == ["otlphttp/audit"]
    assert _audit_exporters(_load("agent.yaml")) == ["otlp/gateway"]


@pytest.mark.parametrize("name", FILES)
def test_nothing_batches_before_the_persistent_queue_on_the_audit_route(name: str) -> None:
    """A batch processor answers success once data is in its buffer and drops the batch
    when the export behind it fails: on the audit route only the exporter's own
    sending_queue batching (after the persistent queue) is allowed."""
    config = _load(name)
    pipelines = config["service"]["pipelines"]
    for pipeline in _audit_route(config):
        for processor in pipelines[pipeline].get("processors", []):
            assert component_type(processor) in SYNCHRONOUS_PROCESSORS, (name, pipeline,
                                                                        processor)


@pytest.mark.parametrize("name", FILES)
def test_audit_exporters_queue_on_disk_block_when_full_and_never_give_up(name: str) -> None:
    config = _load(name)
    for exporter in _audit_exporters(config):
        settings = config["exporters"][exporter]
        queue = settings["sending_queue"]
        assert queue["enabled"] is True
        storage = queue["storage"]
        assert component_type(storage) == "file_storage"
        assert storage in config["service"]["extensions"]
        assert config["extensions"][storage]["fsync"] is True
        # a full queue holds the receiver (backpressure) instead of refusing at once
        assert queue["block_on_overflow"] is True
        assert "blocking" not in queue and not queue.get("wait_for_result", False)
        # the persistent queue counts requests at v0.130.0; its batches count bytes
        assert queue.get("sizer", "requests") == "requests"
        assert queue["batch"]["sizer"] == "bytes"
        retry = settings["retry_on_failure"]
        assert retry["enabled"] is True and retry["max_elapsed_time"] == 0


# ----------------------------------------------------------------------- sizes


def _receive_limit(config: dict[str, Any]) -> int:
    """Largest request (uncompressed bytes) the file's OTLP receiver accepts."""
    protocols = config["receivers"]["otlp"]["protocols"]
    grpc = (protocols.get("grpc") or {}).get("max_recv_msg_size_mib", GRPC_DEFAULT_MAX_RECV_MIB)
    http = (protocols.get("http") or {}).get("max_request_body_size",
                                             HTTP_DEFAULT_MAX_REQUEST_BODY)
    return int(max(grpc * MIB, http))


def _server_body_limit() -> int:
    """The default body limit of ``otel-audit serve`` (the CLI option and the app)."""
    from otel_audit.cli.serve import serve
    from otel_audit.server import app

    limits = [inspect.signature(serve).parameters["max_body_bytes"].default,
              app.DEFAULT_MAX_BODY_BYTES]
    assert all(isinstance(limit, int) for limit in limits)
    return int(min(limits))


def _batch_max(config: dict[str, Any], exporter: str) -> int:
    batch = config["exporters"][exporter]["sending_queue"]["batch"]
    assert batch["sizer"] == "bytes" and batch["max_size"] > 0
    return int(batch["max_size"])


def test_request_sizes_stay_under_every_next_hop_limit() -> None:
    """A batch never exceeds what the next hop accepts, and every request a hop accepts
    fits whole in one of its batches (the batcher drops a record larger than max_size)."""
    agent, gateway = _load("agent.yaml"), _load("audit-gateway.yaml")
    agent_in, gateway_in = _receive_limit(agent), _receive_limit(gateway)
    agent_out = _batch_max(agent, "otlp/gateway")
    gateway_out = _batch_max(gateway, "otlphttp/audit")
    server_in = _server_body_limit()
    assert agent_in <= agent_out < gateway_in <= gateway_out < server_in
    # both protocols of a receiver hold the same limit: no door is wider than the batch
    for config in (agent, gateway):
        protocols = config["receivers"]["otlp"]["protocols"]
        assert protocols["grpc"]["max_recv_msg_size_mib"] * MIB == \
            protocols["http"]["max_request_body_size"]


# ----------------------------------------------------------------------- token, TLS, disk


def _bearertokenauth_accepts(settings: dict[str, Any], environ: dict[str, str]) -> bool:
    """bearertokenauthextension Config.Validate after the env provider resolved the file."""
    values = {key: expand_env(str(settings.get(key) or ""), environ)
              for key in ("token", "filename")}
    return bool(values["token"] or values["filename"] or settings.get("tokens"))


def test_the_server_token_cannot_be_left_empty_silently() -> None:
    config = _load("audit-gateway.yaml")
    exporter = config["exporters"]["otlphttp/audit"]
    authenticator = exporter["auth"]["authenticator"]
    assert component_type(authenticator) == "bearertokenauth"
    assert authenticator in config["service"]["extensions"]
    assert "Authorization" not in (exporter.get("headers") or {})
    settings = config["extensions"][authenticator]
    assert settings["token"] == "${env:OTEL_AUDIT_SERVER_TOKEN}"  # no default on purpose
    # unset or empty: Validate refuses the configuration, the gateway does not start
    assert not _bearertokenauth_accepts(settings, {})
    assert not _bearertokenauth_accepts(settings, {"OTEL_AUDIT_SERVER_TOKEN": ""})
    assert _bearertokenauth_accepts(settings, {"OTEL_AUDIT_SERVER_TOKEN": "s3cret"})


def test_env_defaults_apply_only_to_unset_variables() -> None:
    text = "${env:OTEL_AUDIT_SERVE_CA_FILE:-}|${env:AUDIT_QUEUE_DIR:-/var/q}"
    assert expand_env(text, {}) == "|/var/q"
    assert expand_env(text, {"AUDIT_QUEUE_DIR": ""}) == "|"
    assert expand_env(text, {"OTEL_AUDIT_SERVE_CA_FILE": "/etc/ca.pem"}) == "/etc/ca.pem|/var/q"
    readme = (CONFIG_DIR / "README.md").read_text()
    assert "only when the variable is unset" in readme


def test_a_private_ca_for_the_ingest_servers_is_configurable() -> None:
    config = _load("audit-gateway.yaml")
    tls = config["exporters"]["otlphttp/audit"]["tls"]
    assert tls["ca_file"] == "${env:OTEL_AUDIT_SERVE_CA_FILE:-}"
    assert not tls.get("insecure") and not tls.get("insecure_skip_verify")
    assert "OTEL_AUDIT_SERVE_CA_FILE" in (CONFIG_DIR / "README.md").read_text()


@pytest.mark.parametrize("name", FILES)
def test_queues_are_not_compacted_at_start(name: str) -> None:
    """compaction.on_start rewrites the whole queue file before the queue is served
    (after an outage: the whole backlog); online compaction on rebound is enough."""
    config = _load(name)
    for ext_id, settings in config["extensions"].items():
        if component_type(ext_id) != "file_storage":
            continue
        compaction = settings.get("compaction") or {}
        assert not compaction.get("on_start", False), ext_id
        if compaction.get("on_rebound"):
            assert compaction["check_interval"] not in (0, "0s"), ext_id


def test_agents_reconnect_so_they_spread_over_the_gateways() -> None:
    grpc = _load("audit-gateway.yaml")["receivers"]["otlp"]["protocols"]["grpc"]
    parameters = grpc["keepalive"]["server_parameters"]
    assert parameters["max_connection_age"] and parameters["max_connection_age_grace"]


def test_readme_documents_the_size_chain() -> None:
    readme = (CONFIG_DIR / "README.md").read_text()
    agent, gateway = _load("agent.yaml"), _load("audit-gateway.yaml")
    for value in (_receive_limit(agent), _batch_max(agent, "otlp/gateway"),
                  _receive_limit(gateway), _batch_max(gateway, "otlphttp/audit")):
        assert f"{value // MIB} MiB" in readme, value
    assert "--max-body-bytes" in readme


# ----------------------------------------------------------------------- Validate rules

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: Any) -> float:
    """A Go duration string (or 0) in seconds."""
    if value in (0, None):
        return 0.0
    parts = re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", str(value))
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def _validate_queue(queue: dict[str, Any]) -> None:
    # exporterhelper queuebatch Config.Validate and BatchConfig.Validate
    assert queue["num_consumers"] > 0 and queue["queue_size"] > 0
    assert not (queue.get("storage") and queue.get("wait_for_result"))
    batch = queue.get("batch")
    if batch is not None:
        sizer = batch.get("sizer", queue.get("sizer", "items"))
        assert sizer in ("items", "bytes")
        assert _seconds(batch["flush_timeout"]) > 0
        assert batch.get("min_size", 0) >= 0 and batch.get("max_size", 0) >= 0
        if batch.get("max_size", 0) > 0:
            assert batch["max_size"] >= batch.get("min_size", 0)
        if sizer == queue.get("sizer", "requests"):
            assert batch.get("min_size", 0) <= queue["queue_size"]


def _validate_retry(retry: dict[str, Any]) -> None:
    # configretry BackOffConfig.Validate
    initial, maximum = _seconds(retry["initial_interval"]), _seconds(retry["max_interval"])
    elapsed = _seconds(retry["max_elapsed_time"])
    assert initial >= 0 and maximum >= 0 and elapsed >= 0
    assert 0 <= retry.get("randomization_factor", 0.5) <= 1
    if elapsed > 0:
        assert elapsed >= initial and elapsed >= maximum


@pytest.mark.parametrize("name", FILES)
def test_the_component_validate_rules_hold(name: str) -> None:
    """What each component's Validate checks at start (``otelcol-contrib validate``
    runs them where the binary is installed; this keeps them checked without it)."""
    config = _load(name)
    for exp_id, settings in config["exporters"].items():
        assert settings["endpoint"], exp_id
        if "sending_queue" in settings:
            _validate_queue(settings["sending_queue"])
        if "retry_on_failure" in settings:
            _validate_retry(settings["retry_on_failure"])
    for proc_id, settings in config["processors"].items():
        if component_type(proc_id) == "memory_limiter":  # memorylimiter Config.Validate
            assert _seconds(settings["check_interval"]) > 0
            limit, spike = settings["limit_percentage"], settings["spike_limit_percentage"]
            assert 0 < limit <= 100 and 0 <= spike < limit
        if component_type(proc_id) == "batch":  # batchprocessor Config.Validate
            assert settings.get("send_batch_max_size", 0) in (0, None) or \
                settings["send_batch_max_size"] >= settings.get("send_batch_size", 0)
            assert _seconds(settings.get("timeout", 0)) >= 0
    for conn_id, settings in (config.get("connectors") or {}).items():
        assert component_type(conn_id) == "routing"  # routingconnector Config.Validate
        assert settings["table"]
        for route in settings["table"]:
            assert bool(route.get("statement")) != bool(route.get("condition"))
            assert route["pipelines"]
            assert route.get("context", "resource") in (
                "resource", "span", "metric", "datapoint", "log", "request")
        assert settings.get("error_mode", "propagate") in ("ignore", "propagate", "silent")
    for ext_id, settings in config["extensions"].items():
        if component_type(ext_id) == "file_storage":  # filestorage Config.Validate
            compaction = settings.get("compaction") or {}
            assert compaction.get("max_transaction_size", 0) >= 0
            if compaction.get("on_rebound"):
                assert _seconds(compaction["check_interval"]) > 0
        if component_type(ext_id) == "health_check":  # healthcheckextension Config.Validate
            assert settings["endpoint"] and settings.get("path", "/").startswith("/")
