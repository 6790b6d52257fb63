"""``attributes_to_fields`` reads one table per attribute (field, preference, kind):
the preferred attribute of a field wins in any order, JSON and flag fields are
converted whichever attribute gave them, and the notes follow the field order."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from otel_audit.mapping import JSON_TOO_DEEP, attributes_to_fields
from otel_audit.record import NORMALISATION_KEY

ATTRS: dict[str, Any] = {"enduser.id": "second", "user.id": "first", "http.route": "/r/{id}",
                         "url.path": "/r/7", "audit.success": "no",
                         "audit.new_values": '{"a": 1}', "audit.action": "READ"}


@pytest.mark.parametrize("order", list(itertools.permutations(
    ["enduser.id", "user.id", "http.route", "url.path"])))
def test_preferred_attribute_wins_in_any_order(order: tuple[str, ...]) -> None:
    fields = attributes_to_fields({name: ATTRS[name] for name in order})
    assert fields == {"user_id": "first", "request_path": "/r/7"}


def test_alternative_alone_and_none_values() -> None:
    assert attributes_to_fields({"enduser.id": "e", "http.route": "/x"}) == {
        "user_id": "e", "request_path": "/x"}
    assert attributes_to_fields({"user.id": None, "enduser.id": "e"}) == {"user_id": "e"}
    assert attributes_to_fields({"enduser.id": "e", "user.id": None}) == {"user_id": "e"}


def test_kinds_converted_and_order_kept() -> None:
    fields = attributes_to_fields(ATTRS, {"service.name": "svc"})
    assert list(fields) == ["user_id", "request_path", "success", "new_values", "action",
                            "service_name"]
    assert fields["success"] is False
    assert fields["new_values"] == {"a": 1}
    assert attributes_to_fields({"audit.old_values": "  [1, 2]",
                                 "audit.changes": " text"}) == {
        "old_values": [1, 2], "changes": " text"}


def test_too_deep_notes_follow_the_field_order() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    fields = attributes_to_fields({"audit.old_values": deep, "audit.changes": deep,
                                   "audit.context": {"k": 1}})
    notes = fields["context"][NORMALISATION_KEY]
    assert [(n["field"], n["kind"]) for n in notes] == [("changes", JSON_TOO_DEEP),
                                                        ("old_values", JSON_TOO_DEEP)]
    assert fields["context"]["k"] == 1
