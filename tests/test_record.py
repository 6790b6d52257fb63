"""Normalisation of bad input: every change is made and noted, nothing raises."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from otel_audit.record import (
    COLUMN_LIMITS,
    NORMALISATION_KEY,
    SCHEMA_VERSION,
    AuditAction,
    AuditRecord,
    json_safe,
    normalise,
)

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def make(**fields: Any) -> AuditRecord:
    base: dict[str, Any] = {"id": "0" * 32, "timestamp": NOW, "action": "READ", "user_id": "u"}
    base.update(fields)
    return AuditRecord(**base)


def notes(record: AuditRecord) -> list[dict[str, Any]]:
    return list((record.context or {}).get(NORMALISATION_KEY, []))


class Colour(enum.Enum):
    RED = "red"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def test_record_is_immutable_and_slotted() -> None:
    record = make()
    with pytest.raises(AttributeError):
        record.action = "DELETE"  # type: ignore[misc]
    assert not hasattr(record, "__dict__")
    assert record.to_dict()["action"] == "READ"


def test_clean_record_takes_the_fast_path_unchanged() -> None:
    record = make(new_values={"a": 1, "b": [1, 2]}, context={"k": "v"})
    stored, texts = normalise(record)
    assert stored is record
    assert json.loads(texts["new_values"] or "") == {"a": 1, "b": [1, 2]}
    assert texts["old_values"] is None


@pytest.mark.parametrize(
    ("value", "expected", "kind"),
    [
        (dt.datetime(2026, 1, 1, 12, 0), "2026-01-01T12:00:00", "converted"),
        (dt.date(2026, 1, 1), "2026-01-01", "converted"),
        (decimal.Decimal("1.10"), "1.10", "converted"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001", "converted"),
        (b"\x00\xff", "AP8=", "converted"),
        ({3, 1, 2}, [1, 2, 3], "converted"),
        (float("nan"), "NaN", "non_finite_float"),
        (float("inf"), "Infinity", "non_finite_float"),
        (float("-inf"), "-Infinity", "non_finite_float"),
        ("a\x00b", "a\ufffdb", "nul_replaced"),
        ("x\udc80y", "x\ufffdy", "surrogate_replaced"),
        (Colour.RED, "red", None),
        (BadRepr(), "<unrepresentable BadRepr>", "repr"),
    ],
)
def test_json_values_are_made_safe_and_noted(value: Any, expected: Any, kind: str | None) -> None:
    stored, texts = normalise(make(new_values={"v": value}))
    assert stored.new_values == {"v": expected}
    assert json.loads(texts["new_values"] or "") == {"v": expected}
    kinds = {n["kind"] for n in notes(stored)}
    if kind is not None:
        assert kind in kinds
        assert any(n["field"] == "new_values.v" for n in notes(stored))


def test_arbitrary_objects_are_stored_by_repr() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<Thing 7>"

    stored, _ = normalise(make(old_values={"t": Thing()}))
    assert stored.old_values == {"t": "<Thing 7>"}


def test_cycles_and_depth_are_cut() -> None:
    cyclic: dict[str, Any] = {"name": "loop"}
    cyclic["self"] = cyclic
    deep: Any = "bottom"
    for _ in range(50):
        deep = {"d": deep}
    stored, texts = normalise(make(context={"cyclic": cyclic, "deep": deep}))
    assert stored.context["cyclic"] == {"name": "loop", "self": "<cycle>"}
    assert "<max depth>" in (texts["context"] or "")
    kinds = {n["kind"] for n in notes(stored)}
    assert {"cycle", "max_depth"} <= kinds


def test_non_string_keys_are_converted() -> None:
    stored, _ = normalise(make(new_values={1: "a", (1, 2): "b"}))
    assert stored.new_values == {"1": "a", "(1, 2)": "b"}


@pytest.mark.parametrize("field", sorted(set(COLUMN_LIMITS) - {"id"}))
def test_over_long_strings_are_truncated_to_their_column(field: str) -> None:
    limit = COLUMN_LIMITS[field]
    stored, _ = normalise(make(**{field: "x" * (limit + 10)}))
    assert getattr(stored, field) == "x" * limit
    assert {"field": field, "kind": "truncated", "original_length": limit + 10,
            "limit": limit} in notes(stored)


def test_nul_and_surrogates_in_columns_are_replaced() -> None:
    stored, _ = normalise(make(resource_id="r\x00", user_agent="ua\ud800"))
    assert stored.resource_id == "r\ufffd"
    assert stored.user_agent == "ua\ufffd"
    assert {n["kind"] for n in notes(stored)} == {"nul_replaced", "surrogate_replaced"}


def test_missing_action_and_user_become_unknown() -> None:
    stored, _ = normalise(make(action=None, user_id=""))
    assert (stored.action, stored.user_id) == ("unknown", "unknown")
    assert {n["field"] for n in notes(stored)} == {"action", "user_id"}


def test_enum_action_is_stored_as_its_value_without_a_note() -> None:
    stored, _ = normalise(make(action=AuditAction.DELETE))
    assert stored.action == "DELETE"
    assert type(stored.action) is str
    assert notes(stored) == []


def test_non_string_column_values_are_converted() -> None:
    stored, _ = normalise(make(resource_id=42, success="yes", requires_review=None))
    assert stored.resource_id == "42"
    assert stored.success is True
    assert stored.requires_review is False


def test_naive_and_offset_timestamps_become_utc() -> None:
    naive, _ = normalise(make(timestamp=dt.datetime(2026, 1, 1, 12)))
    assert naive.timestamp == dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    assert {"field": "timestamp", "kind": "assumed_utc"} in notes(naive)
    plus2 = dt.timezone(dt.timedelta(hours=2))
    shifted, _ = normalise(make(timestamp=dt.datetime(2026, 1, 1, 12, tzinfo=plus2)))
    assert shifted.timestamp == dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    invalid, _ = normalise(make(timestamp="yesterday"))
    assert isinstance(invalid.timestamp, dt.datetime)


def test_oversized_record_is_truncated_to_the_cap() -> None:
    big = {"blob": "y" * 200_000}
    stored, texts = normalise(make(new_values=big, old_values={"small": 1}), max_record_bytes=65536)
    assert stored.new_values["_truncated"] is True
    assert stored.new_values["original_bytes"] > 200_000
    assert stored.old_values == {"small": 1}
    total = sum(len((t or "").encode()) for t in texts.values())
    assert total < 65536
    assert any(n["kind"] == "record_truncated" and n["field"] == "new_values"
               for n in notes(stored))


def test_oversized_text_field_is_cut() -> None:
    stored, _ = normalise(make(error_message="e" * 100_000), max_record_bytes=8192)
    assert len(stored.error_message.encode()) <= 8192
    assert any(n["kind"] == "record_truncated" for n in notes(stored))


def test_existing_notes_in_context_are_kept() -> None:
    stored, _ = normalise(make(context={NORMALISATION_KEY: [{"field": "x", "kind": "earlier"}],
                                        "v": "\x00"}))
    kinds = [n["kind"] for n in notes(stored)]
    assert kinds == ["earlier", "nul_replaced"]


def test_scalar_context_is_wrapped_when_notes_are_added() -> None:
    stored, _ = normalise(make(context="plain", resource_id="\x00"))
    assert stored.context["value"] == "plain"


def test_json_safe_is_public_and_pure() -> None:
    data = {"when": dt.date(2026, 1, 1)}
    assert json_safe(data) == {"when": "2026-01-01"}
    assert data == {"when": dt.date(2026, 1, 1)}


def test_stored_json_is_canonical() -> None:
    """normalise() writes the chain's canonical JSON (sorted keys, string keys)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from otel_audit.integrity.canonical import canonical_json, canonical_stored_json

    keys = st.one_of(st.text(max_size=6), st.integers(-20, 20), st.booleans())
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40),
                       st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
    payloads = st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=12)

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(keys, payloads, max_size=5))
    def check(value: dict[Any, Any]) -> None:
        _, texts = normalise(make(new_values=value))
        text = texts["new_values"]
        assert text is not None
        # the chain sealer trusts this: only JSONB-sensitive numbers need a round trip
        assert canonical_stored_json(text) == canonical_json(text)

    check()


# ------------------------------------------------------------------ totality


class Hostile:
    """Every dunder method a normaliser might call raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __str__(self) -> str:
        raise RuntimeError("str")

    def __bool__(self) -> bool:
        raise RuntimeError("bool")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __hash__(self) -> int:
        return 7  # usable as a key; comparing it raises

    def __lt__(self, other: object) -> bool:
        raise RuntimeError("lt")

    def __iter__(self) -> Any:
        raise RuntimeError("iter")

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance() asks for it
        raise RuntimeError("class")


class HostileStr(str):
    def __lt__(self, other: object) -> bool:
        raise ZeroDivisionError

    def __hash__(self) -> int:
        return str.__hash__(self)

    def replace(self, *args: Any) -> str:  # type: ignore[override]
        raise RuntimeError("replace")

    def encode(self, *args: Any) -> bytes:  # type: ignore[override]
        raise RuntimeError("encode")


class BadMapping(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise RuntimeError("items")


def stored_ok(record: AuditRecord, texts: dict[str, str | None]) -> None:
    """What every normalised record must be: storable by every store."""
    for field, limit in COLUMN_LIMITS.items():
        value = getattr(record, field)
        assert value is None or (type(value) is str and len(value) <= limit), field
    assert record.id and record.action and record.user_id
    for field in ("user_agent", "error_message"):
        assert getattr(record, field) is None or type(getattr(record, field)) is str
    for field in ("id", *COLUMN_LIMITS, "user_agent", "error_message"):
        value = getattr(record, field)
        if value is not None:
            assert "\x00" not in value
            value.encode("utf-8")  # no lone surrogate
    assert type(record.success) is bool and type(record.requires_review) is bool
    assert type(record.timestamp) is dt.datetime
    assert record.timestamp.utcoffset() == dt.timedelta(0)
    assert type(record.schema_version) is int and 0 <= record.schema_version < 2**31
    for field in ("old_values", "new_values", "changes", "context", "delegation_chain"):
        text = texts[field]
        value = getattr(record, field)
        if text is None:
            assert value is None
            continue
        assert "\x00" not in text and "\\u0000" not in text
        text.encode("utf-8")
        assert json.loads(text) == json.loads(json.dumps(value, allow_nan=False))
    chain = record.delegation_chain  # a list of {principal, via} (or the record cap's marker)
    assert chain is None or (type(chain) is dict and chain.get("_truncated") is True) or (
        type(chain) is list and all(type(link) is dict and set(link) == {"principal", "via"}
                                    and all(type(v) is str for v in link.values())
                                    for link in chain))


@pytest.mark.parametrize("fields", [
    {"user_id": "", "context": {True: 1}},
    {"new_values": {"n": 10**5000}},
    {"new_values": {10**5000: "key"}},
    {"new_values": {"s": {decimal.Decimal("NaN"), decimal.Decimal(1)}}},
    {"new_values": {"s": {decimal.Decimal("NaN"), 1, "a", None}, "q": [decimal.Decimal("sNaN")]}},
    {"timestamp": dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))},
    {"timestamp": dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-5)))},
    {"timestamp": dt.datetime.min},
    {"success": Hostile(), "requires_review": Hostile()},
    {"service_name": "svc\ud800", "error_message": "\udfff", "user_agent": HostileStr("ua")},
    {"schema_version": 2**70},
    {"schema_version": -1},
    {"schema_version": "1"},
    {"schema_version": Hostile()},
    {"action": Hostile(), "user_id": Hostile(), "resource_id": HostileStr("r")},
    {"new_values": {Hostile(): Hostile(), "list": [Hostile()], "h": HostileStr("v")}},
    {"new_values": {HostileStr("b"): 1, HostileStr("a"): 2}},
    {"new_values": {None: 1, 1.5: 2, (1, "t"): 3, float("nan"): 4}},
    {"new_values": BadMapping(a=1)},
    {"new_values": {"m": BadMapping(secret="s")}},
    {"id": None},
    {"timestamp": Hostile()},
    {"context": {NORMALISATION_KEY: "not a list", "v": "\x00"}},
    {"delegation_chain": [Hostile(), {"principal": Hostile(), "via": HostileStr("v")}]},
    {"delegation_chain": BadMapping(principal="p"), "auth_method": Hostile(),
     "acting_as": HostileStr("a")},
    {"delegation_chain": [{"principal": "a\x00", "via": "\ud800"}, "b" * 70000]},
], ids=",".join)
def test_normalise_is_total(fields: dict[str, Any]) -> None:
    record = make(**fields)
    stored, texts = normalise(record)
    stored_ok(stored, texts)
    assert normalise(stored)[0] == stored  # normalising again changes nothing


def test_issue_values_are_stored_as_documented() -> None:
    stored, _ = normalise(make(user_id="", context={True: 1}))
    assert stored.context["true"] == 1
    assert {"field": "context.true", "kind": "key_converted", "type": "bool"} in notes(stored)

    stored, _ = normalise(make(new_values={"n": 10**5000}))
    assert stored.new_values["n"] == "1" + "0" * 5000
    assert {"field": "new_values.n", "kind": "large_int", "digits": 5001} in notes(stored)

    stored, _ = normalise(make(new_values={"s": {decimal.Decimal("NaN"), decimal.Decimal(1)}}))
    assert stored.new_values["s"] == ["1", "NaN"]

    plus5 = dt.timezone(dt.timedelta(hours=5))
    stored, _ = normalise(make(timestamp=dt.datetime(1, 1, 1, tzinfo=plus5)))
    assert stored.timestamp == dt.datetime.min.replace(tzinfo=dt.UTC)
    assert {"field": "timestamp", "kind": "out_of_range",
            "original": "0001-01-01T00:00:00+05:00",
            "stored": "0001-01-01T00:00:00+00:00"} in notes(stored)

    stored, _ = normalise(make(success=Hostile(), requires_review=Hostile()))
    assert (stored.success, stored.requires_review) == (False, True)
    assert {"field": "success", "kind": "unrepresentable", "type": "Hostile",
            "stored": False} in notes(stored)

    stored, _ = normalise(make(schema_version=2**70))
    assert stored.schema_version == 1 or stored.schema_version == SCHEMA_VERSION
    assert {"field": "schema_version", "kind": "invalid", "type": "int",
            "stored": SCHEMA_VERSION} in notes(stored)

    stored, _ = normalise(make(new_values={1: "a", "1": "b"}))
    assert stored.new_values == {"1": "a", "1#2": "b"}
    assert {"field": "new_values.1", "kind": "key_collision", "stored_as": "1#2"} in notes(stored)

    # a mapping that cannot be read is never shown through its repr (redaction never saw it)
    stored, _ = normalise(make(new_values={"m": BadMapping(secret="s")}))
    assert stored.new_values == {"m": "<unreadable BadMapping>"}


def test_ints_follow_the_interpreters_digit_limit() -> None:
    import sys

    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        stored, texts = normalise(make(new_values={"small": 10**600, "big": 10**700}))
    finally:
        sys.set_int_max_str_digits(limit)
    assert stored.new_values["small"] == 10**600
    assert stored.new_values["big"] == "1" + "0" * 700
    stored_ok(stored, texts)


def test_notes_are_bounded() -> None:
    stored, texts = normalise(make(new_values={f"k{i}": {i} for i in range(1000)}))
    kept = notes(stored)
    assert len(kept) == 65
    assert kept[-1] == {"field": "*", "kind": "notes_omitted", "count": 1000 - 64}
    assert len(texts["context"] or "") < 16384
    stored_ok(stored, texts)


def test_a_failure_inside_normalise_still_keeps_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_audit import normalisation

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(normalisation, "_normalise", broken)
    stored, texts = normalise(make(resource_id="r\x00", new_values={"v": {1, 2}}))
    stored_ok(stored, texts)
    assert stored.resource_id == "r\ufffd"
    assert notes(stored) == [{"field": "*", "kind": "salvaged"}]


def test_schema_version_and_id_are_checked_on_every_path(speedups: Any) -> None:
    from otel_audit.record import plain_texts

    for fields in ({"schema_version": 2**40}, {"schema_version": True}, {"id": None},
                   {"id": ""}, {"context": {True: 1}}, {"context": {"a": {None: 1}}}):
        batch = [make(), make(**fields)]
        assert plain_texts(batch) is None, fields
        assert plain_texts(batch, compiled=False) is None, fields
    assert plain_texts([make()]) == plain_texts([make()], compiled=False) == [normalise(make())[1]]


# ------------------------------------------------------------------ property


class HostileKey:
    """A usable key (hash and equality by identity) that cannot be shown. (Its
    ``__class__`` works: Hypothesis asks keys for it.)"""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __lt__(self, other: object) -> bool:
        raise RuntimeError("lt")


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


# factories, not values: Hypothesis inspects sampled values (isinstance), which Hostile
# refuses
_ODD_FACTORIES: list[Callable[[], Any]] = [
    Hostile, lambda: HostileStr("hs"), BadRepr, lambda: BadMapping(x=1),
    lambda: Colour.RED, lambda: Level.HIGH, lambda: decimal.Decimal("NaN"),
    lambda: decimal.Decimal("sNaN"), lambda: decimal.Decimal("-Infinity"),
    lambda: float("nan"), lambda: float("-inf"), lambda: 10**5000, lambda: -(10**4400),
    lambda: 2**64, lambda: uuid.UUID(int=5), lambda: b"\x00\xff", lambda: bytearray(b"ab"),
    lambda: dt.date.max, lambda: dt.time(1, 2),
    lambda: dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-23))),
    lambda: dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=23))),
    lambda: frozenset({1, "a"}), lambda: {decimal.Decimal("NaN"), decimal.Decimal(2)},
    type("Odd\u2028", (), {}), object, lambda: "\ud800\x00",
]


def _odd_values() -> Any:
    from hypothesis import strategies as st

    return st.one_of(
        st.integers(0, len(_ODD_FACTORIES) - 1).map(lambda i: _ODD_FACTORIES[i]()),
        st.integers(), st.floats(), st.text(), st.binary(max_size=8),
        st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
    )


def _keys() -> Any:
    from hypothesis import strategies as st

    odd_keys: list[Callable[[], Any]] = [lambda: HostileStr("k"), HostileKey, lambda: 10**5000]
    return st.one_of(st.text(max_size=6), st.integers(), st.booleans(), st.none(),
                     st.floats(), st.tuples(st.integers(), st.text(max_size=2)),
                     st.integers(0, 2).map(lambda i: odd_keys[i]()))


def _trees() -> Any:
    from hypothesis import strategies as st

    leaves = _odd_values()
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(_keys(), inner, max_size=4),
        st.frozensets(st.integers() | st.text(max_size=3), max_size=3)), max_leaves=15)


def _with_cycle(value: Any, pick: int) -> Any:
    """Make value cyclic after the fact: one of its dicts or lists gets value itself."""
    found: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            found.append(item)
            stack.extend(item.values())
        elif type(item) is list:
            found.append(item)
            stack.extend(item)
    if found:
        target = found[pick % len(found)]
        if type(target) is dict:
            target["loop"] = value
        else:
            target.append(value)
    return value


def test_normalise_never_raises_for_any_record() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from otel_audit import _accel
    from otel_audit.record import SNAPSHOT_ATOMS, plain_texts, snapshot

    columns = st.one_of(st.none(), st.text(max_size=300), _odd_values())
    records = st.builds(
        make,
        action=columns, user_id=columns, resource_id=columns, service_name=columns,
        user_agent=columns, error_message=columns,
        timestamp=st.one_of(st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
                            _odd_values()),
        success=st.one_of(st.booleans(), st.none(), _odd_values()),
        requires_review=st.one_of(st.booleans(), st.none(), _odd_values()),
        schema_version=st.one_of(st.integers(), _odd_values()),
        old_values=_trees(), new_values=_trees(), changes=st.none() | _trees(),
        context=st.none() | _trees(), auth_method=columns, acting_as=columns,
        delegation_chain=st.one_of(st.none(), _trees(), columns, st.lists(st.fixed_dictionaries(
            {"principal": st.text(max_size=20), "via": st.text(max_size=20)}), max_size=3)),
    )

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(records, st.integers(0, 50), st.booleans())
    def check(record: AuditRecord, pick: int, cyclic: bool) -> None:
        if cyclic:
            _with_cycle(record.new_values, pick)
        stored, texts = normalise(record)
        stored_ok(stored, texts)
        # what the call keeps is normalised alike (notes may come in another order)
        again, again_texts = normalise(snapshot(record))
        stored_ok(again, again_texts)
        # the compiled snapshot and the pure one agree (a timestamp made at the call aside)
        if _accel.speedups is not None:
            compiled = _accel.snapshot(record, SNAPSHOT_ATOMS, enum.EnumType, snapshot)
            pure = snapshot(record)
            if type(record.timestamp) is not dt.datetime:
                compiled, pure = compiled._replace(timestamp=0), pure._replace(timestamp=0)
            assert compiled == pure
        # the batch paths answer only with normalise's own texts
        for compiled_path in (True, False):
            batch = plain_texts([stored, record], compiled=compiled_path)
            if batch is not None:
                assert batch == [normalise(stored)[1], normalise(record)[1]]

    check()
