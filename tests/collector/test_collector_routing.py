"""The gateway's routing condition decides exactly as ``otel_audit.mapping.is_audit``.

A log record the ingest server would store must never be routed to the ordinary log
backend, and the other way round. The condition in audit-gateway.yaml is evaluated
with a small OTTL evaluator (``ottl_condition``: only the constructs used) on the wire
form of each record, and the server's decision is taken the way the server takes it
(its OTLP attribute decoder, then ``is_audit``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as OtlpLogRecord
from ottl_condition import EMPTY, LogRecord, UnsupportedCondition, compile_condition

from otel_audit.mapping import is_audit
from otel_audit.server import otlp

GATEWAY = Path(__file__).resolve().parents[2] / "collector-config" / "audit-gateway.yaml"
SHARED_CASES = Path(__file__).resolve().parents[1] / "server" / "audit_cases.py"


def _load_shared_cases() -> ModuleType:
    # tests/ has no packages: load the server tests' module by its path
    spec = importlib.util.spec_from_file_location("shared_audit_cases", SHARED_CASES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


AUDIT_CASES: list[tuple[dict[str, Any], bool]] = _load_shared_cases().AUDIT_CASES


def _route() -> dict[str, Any]:
    config = yaml.safe_load(GATEWAY.read_text())
    (route,) = config["connectors"]["routing"]["table"]
    assert isinstance(route, dict)
    return route


def _any_value(value: Any) -> AnyValue:
    if value is None or value is EMPTY:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[_any_value(v) for v in value]))
    return AnyValue(kvlist_value=KeyValueList(values=[
        KeyValue(key=k, value=_any_value(v)) for k, v in value.items()]))


def _wire(case: dict[str, Any]) -> OtlpLogRecord:
    """The OTLP log record a case describes (``None`` attribute -> empty AnyValue)."""
    log = OtlpLogRecord(event_name=case.get("event_name") or "")
    for key, value in (case.get("attributes") or {}).items():
        log.attributes.append(KeyValue(key=key, value=_any_value(value)))
    if "body" in case:
        log.body.CopyFrom(_any_value(case["body"]))
    return log


def _server_decides(log: OtlpLogRecord) -> bool:
    """What ``otel-audit serve`` decides for ``log`` (server/ingest.py ``_to_record``)."""
    return is_audit(otlp.attributes(log.attributes), log.event_name or None)


def _collector_decides(log: OtlpLogRecord) -> bool:
    """What the gateway's routing table decides for ``log`` (pdata view of the record)."""
    route = _route()
    assert route["context"] == "log"
    record = LogRecord(
        event_name=log.event_name,
        attributes=[(kv.key, EMPTY if kv.value.WhichOneof("value") is None
                     else otlp.any_value(kv.value)) for kv in log.attributes])
    return compile_condition(route["condition"])(record)


@pytest.mark.parametrize(("case", "expected"), [
    pytest.param(case, expected, id=repr(case)) for case, expected in AUDIT_CASES])
def test_routing_condition_agrees_with_is_audit_on_the_shared_cases(
        case: dict[str, Any], expected: bool) -> None:
    log = _wire(case)
    assert _server_decides(log) is expected
    assert _collector_decides(log) is expected


_NAMES = st.sampled_from(["", "audit", "Audit", "AUDIT", " audit", "audit.login", "login"])
_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.just(None),  # empty AnyValue
    _NAMES, st.text(max_size=3), st.booleans(), st.integers(-2, 2), st.floats(-1, 1),
    st.binary(max_size=2), st.lists(_NAMES, max_size=2),
    st.dictionaries(st.sampled_from(["action", "audit"]), _NAMES, max_size=2))
_KEYS = st.sampled_from(["audit.action", "event.name", "Audit.Action", "event_name",
                         "audit", "audit.resource.type", "user.id"])


@settings(max_examples=300, deadline=None)
@given(event_name=_NAMES, attributes=st.dictionaries(_KEYS, _VALUES, max_size=4),
       body=st.one_of(st.none(), _NAMES))
def test_routing_condition_agrees_with_is_audit_on_any_record(
        event_name: str, attributes: dict[str, Any], body: str | None) -> None:
    case: dict[str, Any] = {"event_name": event_name, "attributes": attributes}
    if body is not None:
        case["body"] = body
    log = _wire(case)
    assert _collector_decides(log) is _server_decides(log)


def test_evaluator_follows_ottl_semantics() -> None:
    """The evaluator itself: nil for absent and empty values, first duplicate, types."""
    cond = compile_condition('attributes["k"] != nil and not (event_name == "x")')
    assert cond(LogRecord(attributes=[("k", "")]))
    assert cond(LogRecord(attributes=[("k", 0)]))
    assert not cond(LogRecord(attributes=[("k", EMPTY)]))
    assert not cond(LogRecord(attributes=[]))
    assert not cond(LogRecord(event_name="x", attributes=[("k", "v")]))
    first = compile_condition('attributes["k"] == "a"')
    assert first(LogRecord(attributes=[("k", "a"), ("k", "b")]))  # pcommon.Map.Get: first
    assert not first(LogRecord(attributes=[("k", ["a"])]))
    assert not compile_condition('attributes["k"] == "1"')(LogRecord(attributes=[("k", 1)]))
    assert compile_condition('event_name == "" or event_name == "y"')(LogRecord())
    for unsupported in ('IsMatch(event_name, "a")', 'severity_number == 1',
                        'attributes["a"]["b"] != nil', 'event_name > "a"'):
        with pytest.raises(UnsupportedCondition):
            compile_condition(unsupported)
