"""The compiled ``attributes_to_fields`` (otel_audit/_speedups_otlp.c) gives what the
Python original gives: the same fields, values, key order and notes, on hostile
attributes too (wrong types, alternative names in every order, JSON texts of every
kind, deep and huge documents, non-UTF-8 text), or leaves the call to Python
(``NotImplemented``) before doing anything."""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

import pytest

from otel_audit import mapping
from otel_audit.mapping import attributes_to_fields, python_attributes_to_fields


def compiled(speedups: Any, attributes: Any, resource: Any = None) -> Any:
    return speedups.otlp_attributes_to_fields(attributes, resource, mapping._ATTRIBUTE_TABLE,
                                              mapping._scan_json, mapping._add_notes)


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types and key orders all the way down (``1 == True`` and
    ``{"a": 1, "b": 2} == {"b": 2, "a": 1}`` are not enough), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def check(speedups: Any, attributes: Any, resource: Any = None) -> dict[str, Any]:
    expected = python_attributes_to_fields(attributes, resource)
    got = compiled(speedups, attributes, resource)
    assert got is not NotImplemented
    assert same(got, expected), (got, expected)
    assert same(attributes_to_fields(attributes, resource), expected)
    return expected


NAMES = [name for names in mapping.FIELD_ATTRIBUTES.values() for name in names]
TEXTS = [
    "", " ", "x", "true", "TRUE", " Yes ", "no", "0", "1", "\u3000true\u3000", "İ", "nah",
    '{"a": 1}', ' {"a": [1, 2.5, null, true]} ', "[1, 2", "[1] x", "5", "-0", "1e400",
    "-", "NaN", "Infinity", "-Infinity", "nan", '"quoted"', "null", "false ", "\t[]\n",
    "\x0b[1]", "\u3000{}", "\u00a0[1]", "\ud800", "caf\xe9", '{"\\ud800": "\\udfff"}',
    '{"a": 1, "a": 2}', "[" * 50 + "]" * 50, "{" * 3, "t", "n", "f", "x" * 100_000,
    json.dumps({"k": "v" * 10_000, "n": list(range(1000))}),
    "\x00", "[\x00]", '"\\u0000"',
]
VALUES: list[Any] = [*TEXTS, None, True, False, 0, 1, -7, 2**70, 1.5, float("nan"), b"\xff",
                     [], [1, "a"], {}, {"a": {"b": [1]}}, {"_normalised": "x"},
                     {"_normalised": [{"field": "f"}]}, ("t",), object]


def test_every_attribute_with_hostile_values(speedups: Any) -> None:
    for name in [*NAMES, "audit.record_id", "event.name", "other", ""]:
        for value in VALUES:
            check(speedups, {name: value})
            check(speedups, {name: value, "audit.context": {"k": 1}})
            check(speedups, {"audit.context": "not json", name: value})


@pytest.mark.parametrize("field", [f for f, names in mapping.FIELD_ATTRIBUTES.items()
                                   if len(names) > 1])
def test_alternative_names_in_every_order(speedups: Any, field: str) -> None:
    names = mapping.FIELD_ATTRIBUTES[field]
    for values in itertools.product(["a", None, "true", "[1]"], repeat=len(names)):
        for order in itertools.permutations(range(len(names))):
            attrs = {names[i]: values[i] for i in order}
            check(speedups, attrs)
            check(speedups, {"audit.action": "X", **attrs, "user.email": "e"})


def test_random_mixtures(speedups: Any) -> None:
    rng = random.Random(16)
    names = [*NAMES, "audit.record_id", "other"]
    for _ in range(3000):
        attrs = {rng.choice(names): rng.choice(VALUES) for _ in range(rng.randint(0, 12))}
        resource = rng.choice([None, {}, {"service.name": rng.choice(VALUES)},
                               {"service.name": None, "x": 1}])
        check(speedups, attrs, resource)


def test_deep_and_huge_json(speedups: Any) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    fields = check(speedups, {"audit.old_values": deep, "audit.changes": deep,
                              "audit.new_values": '{"a": 1}', "audit.context": {"k": 1}})
    assert [n["field"] for n in fields["context"][mapping.NORMALISATION_KEY]] == [
        "changes", "old_values"]
    check(speedups, {"audit.context": deep})  # the note makes the context a dict
    check(speedups, {"audit.context": '{"_normalised": [{"field": "x"}]}',
                     "audit.delegation_chain": deep})
    check(speedups, {"audit.delegation_chain": "{" * 100_000})
    check(speedups, {"audit.new_values": json.dumps([list(range(100))] * 2000)})


def test_non_utf8_text(speedups: Any) -> None:
    # what the decoder makes of bytes that are not UTF-8 (surrogate escapes), and lone
    # surrogates in JSON documents
    odd = b"\xff\xfe[1]".decode("utf-8", "surrogateescape")
    for value in (odd, "\udcff", '["\udcff"]', "[\"\\udcff\"]", "\udcfftrue"):
        for name in ("audit.old_values", "audit.success", "user.id"):
            check(speedups, {name: value})


def test_resource_attributes(speedups: Any) -> None:
    for service in [None, "svc", 5, True, [1], {"a": 1}, "", b"x"]:
        check(speedups, {"audit.action": "A"}, {"service.name": service})
    check(speedups, {}, {})
    check(speedups, None, {"service.name": "svc"})
    check(speedups, None, None)


def test_what_it_leaves_to_python(speedups: Any) -> None:
    class Text(str):
        def strip(self, *args: Any) -> str:
            return "true"

    class Attrs(dict):  # type: ignore[type-arg]
        pass

    for attrs, resource in (({1: "x", "user.id": "u"}, None),
                            ({"audit.success": Text("no")}, None),
                            ({"audit.old_values": Text("[1]")}, None),
                            (Attrs({"user.id": "u"}), None),
                            ([("user.id", "u")], None),
                            ({"user.id": "u"}, {("service", "name"): "x"}),
                            ({"user.id": "u"}, Attrs({"service.name": "s"}))):
        assert compiled(speedups, attrs, resource) is NotImplemented
    # the public function answers as the Python one does
    assert attributes_to_fields({"audit.success": Text("no")}) == {"success": True}
    assert attributes_to_fields({1: "x", "user.id": "u"}) == {"user_id": "u"}  # type: ignore[dict-item]
    assert attributes_to_fields({"user.id": Text("u")}) == {"user_id": "u"}
    assert attributes_to_fields(Attrs({"user.id": "u"}), Attrs(
        {"service.name": "s"})) == {"user_id": "u", "service_name": "s"}


def test_errors_are_those_of_python(speedups: Any) -> None:
    class Loud:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    with pytest.raises(RuntimeError, match="no text"):
        python_attributes_to_fields({}, {"service.name": Loud()})
    with pytest.raises(RuntimeError, match="no text"):
        compiled(speedups, {}, {"service.name": Loud()})
    with pytest.raises(TypeError):
        speedups.otlp_attributes_to_fields({}, None, [], mapping._scan_json,
                                           mapping._add_notes)
