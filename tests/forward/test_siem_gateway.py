"""collector-config/siem-gateway.yaml: every key a field of otelcol-contrib v0.130.0,
every component used, every SIEM route behind a persistent, fsync-ed, blocking queue."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collector"))
from collector_schema import CONFIG_DIR, check_config, load_schema


def _config() -> dict[str, Any]:
    data = yaml.safe_load((CONFIG_DIR / "siem-gateway.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_key_is_a_field_of_the_target_version() -> None:
    assert check_config(_config(), load_schema()) == []


def test_a_misspelt_key_is_caught() -> None:
    config = _config()
    config["exporters"]["splunk_hec/siem"]["sourcetypes"] = "x"
    assert check_config(config, load_schema()) == [
        "exporters.splunk_hec/siem.sourcetypes: unknown field of splunkhecexporter.Config"]


def test_each_siem_gets_every_record_through_a_durable_queue() -> None:
    config = _config()
    (pipeline,) = config["service"]["pipelines"].values()
    assert set(pipeline["exporters"]) == set(config["exporters"]) == {
        "splunk_hec/siem", "elasticsearch/siem", "datadog/siem", "kafka/siem"}
    assert pipeline["processors"] == ["memory_limiter"]  # no buffering processor
    storage = config["extensions"]["file_storage/siem"]
    assert storage["fsync"] is True
    for name, exporter in config["exporters"].items():
        queue = exporter["sending_queue"]
        assert queue["storage"] == "file_storage/siem", name
        assert queue["block_on_overflow"] is True, name
        if "retry_on_failure" in exporter:
            assert exporter["retry_on_failure"]["max_elapsed_time"] == 0, name
    assert set(config["service"]["extensions"]) == set(config["extensions"])
    assert config["receivers"]["otlp"]["protocols"]["http"]["auth"]["authenticator"] == (
        "bearertokenauth/forwarder")
