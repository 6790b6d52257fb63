"""One resolution order: keyword arguments > OTEL_AUDIT_* environment > defaults."""

from __future__ import annotations

import pytest

from otel_audit.config import SETTINGS, AuditConfig, normalise_database_url, resolve_config
from otel_audit.errors import ConfigError


def test_defaults() -> None:
    config = resolve_config({}, environ={})
    assert config == AuditConfig()
    assert config.url == "sqlite:///audit.db"
    assert config.mode == "async"


def test_environment_then_keywords() -> None:
    env = {"OTEL_AUDIT_BATCH_SIZE": "10", "OTEL_AUDIT_FLUSH_INTERVAL_MS": "250",
           "OTEL_AUDIT_MODE": "sync", "OTEL_SERVICE_NAME": "svc", "OTEL_AUDIT_ENABLED": "no"}
    config = resolve_config({}, environ=env)
    assert (config.batch_size, config.flush_interval, config.mode) == (10, 0.25, "sync")
    assert config.service_name == "svc" and config.enabled is False
    kw = resolve_config({"batch_size": 3, "mode": None}, environ=env)
    assert kw.batch_size == 3
    assert kw.mode == "sync"  # None means "not given"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_AUDIT_BATCH_SIZE": "many"}, "OTEL_AUDIT_BATCH_SIZE"),
        ({"OTEL_AUDIT_ENABLED": "perhaps"}, "OTEL_AUDIT_ENABLED"),
        ({"OTEL_AUDIT_MODE": "eventually"}, "mode must be one of"),
        ({"OTEL_AUDIT_QUEUE_SIZE": "-1"}, "queue_size"),
        ({"OTEL_AUDIT_DATABASE_URL": "::nonsense::"}, "invalid database URL"),
    ],
)
def test_bad_environment_raises_config_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config({}, environ=env)


def test_every_setting_has_a_field_and_documentation() -> None:
    fields = set(AuditConfig.__dataclass_fields__)
    for setting in SETTINGS:
        assert setting.name in fields
        assert setting.doc.strip()
        assert getattr(AuditConfig(), setting.name) == setting.default


def test_postgresql_url_selects_psycopg() -> None:
    assert normalise_database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_database_url("sqlite:///x.db").drivername == "sqlite"


def test_typed_settings_are_the_settings() -> None:
    # AuditTrail(...)/configure(...) take TrailSettings keywords: one per setting, and
    # AuditConfig holds one field per setting
    import dataclasses
    import typing

    from otel_audit.config import TrailSettings

    names = {s.name for s in SETTINGS}
    assert set(typing.get_type_hints(TrailSettings)) | {"url"} == names  # url: positional
    assert {f.name for f in dataclasses.fields(AuditConfig)} == names
