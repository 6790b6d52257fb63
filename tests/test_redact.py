"""Redaction: secret-like keys at any depth, mask and HMAC, allow/deny, never fail open."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from otel_audit import AuditTrail, ConfigError
from otel_audit.record import AuditRecord
from otel_audit.redact import REDACTED, Redactor

Factory = Callable[..., AuditTrail]


def _record(**values: Any) -> AuditRecord:
    trail_free = dict.fromkeys(AuditRecord._fields)
    trail_free.update(id="1", action="A", user_id="u", requires_review=False, success=True)
    trail_free.update(values)
    return AuditRecord(**trail_free)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [
    "password", "PASSWORD", "db_password", "passwd", "client_secret", "access_token",
    "api_key", "X-Api-Key", "apikey", "Authorization", "cookie", "Set-Cookie",
    "private_key", "privateKey", "credentials",
])
def test_secret_like_keys_are_masked(key: str) -> None:
    record = _record(new_values={key: "s3cr3t", "name": "kept"})
    out = Redactor()(record)
    assert out.new_values == {key: REDACTED, "name": "kept"}


def test_redaction_reaches_every_depth_and_json_field_without_touching_the_input() -> None:
    payload = {"a": [{"b": {"token": "t"}}, ({"password": "p"},)], "ok": 1}
    record = _record(old_values=payload, changes={"cfg.password": {"old": "x", "new": "y"}},
                     context={"headers": {"cookie": "c"}})
    out = Redactor()(record)
    assert out.old_values == {"a": [{"b": {"token": REDACTED}}, [{"password": REDACTED}]],
                              "ok": 1}
    assert out.changes == {"cfg.password": REDACTED}
    assert out.context == {"headers": {"cookie": REDACTED}}
    assert payload["a"][0] == {"b": {"token": "t"}}  # caller's object untouched


def test_nothing_to_redact_returns_the_same_record() -> None:
    record = _record(new_values={"a": [1, {"b": 2}]})
    assert Redactor()(record) is record


def test_extra_keys_and_allow_list() -> None:
    redactor = Redactor(extra_keys=["ssn"], allow=["token_count"])
    out = redactor(_record(new_values={"ssn": "1", "token_count": 3, "token": "t"}))
    assert out.new_values == {"ssn": REDACTED, "token_count": 3, "token": REDACTED}


def test_hmac_mode_keeps_equality_without_the_value() -> None:
    redactor = Redactor("hmac", hmac_key="k1")
    a = redactor(_record(new_values={"password": "hunter2"})).new_values["password"]
    b = redactor(_record(old_values={"password": "hunter2"})).old_values["password"]
    c = redactor(_record(new_values={"password": "other"})).new_values["password"]
    other_key = Redactor("hmac", hmac_key="k2")(_record(new_values={"password": "hunter2"}))
    assert a == b != c
    assert a.startswith("hmac-sha256:") and "hunter2" not in a
    assert other_key.new_values["password"] != a


def test_uninspectable_values_fail_closed() -> None:
    class Exploding(dict[str, Any]):
        def items(self) -> Any:
            raise RuntimeError("boom")

    out = Redactor()(_record(context=Exploding(password="p")))
    assert out.context == REDACTED


def test_cycles_do_not_hang() -> None:
    loop: dict[str, Any] = {"secret": "s"}
    loop["self"] = loop
    out = Redactor()(_record(new_values=loop))
    assert out.new_values["secret"] == REDACTED


def test_trail_redacts_before_storing(make_trail: Factory) -> None:
    trail = make_trail(redact_keys=("pin",))
    trail.record("LOGIN", user_id="u", new_values={"pin": "1234", "password": "p"},
                 context={"authorization": "Bearer x"})
    [stored] = trail.records()
    assert stored.new_values == {"pin": REDACTED, "password": REDACTED}
    assert stored.context == {"authorization": REDACTED}


def test_trail_hmac_mode_and_off(make_trail: Factory) -> None:
    trail = make_trail(redact="hmac", redact_hmac_key="k")
    trail.record("A", user_id="u", new_values={"token": "t"})
    [stored] = trail.records()
    assert stored.new_values["token"].startswith("hmac-sha256:")
    plain = make_trail(redact="off")
    plain.record("B", user_id="u", new_values={"token": "t"})
    assert plain.records(action="B")[0].new_values == {"token": "t"}


def test_hmac_without_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="redact_hmac_key"):
        AuditTrail("sqlite://", redact="hmac")
