"""Normalisation of bad input: every change is made and noted, nothing raises."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import uuid
from typing import Any

import pytest

from otel_audit.record import (
    COLUMN_LIMITS,
    NORMALISATION_KEY,
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
