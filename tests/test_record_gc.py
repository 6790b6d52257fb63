"""Records and the cycle collector: a cycle through a record is always freed."""

from __future__ import annotations

import gc
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from otel_audit import AuditTrail


@pytest.fixture
def trail() -> Iterator[AuditTrail]:
    trail = AuditTrail("sqlite://")
    try:
        yield trail
    finally:
        trail.shutdown(5)


def unique() -> str:
    """A string only the test (and what it builds) holds: its reference count tells
    whether the records holding it were freed."""
    return "".join(["resource-", str(uuid.uuid4())])


def test_a_cycle_through_the_callers_dict_is_freed(trail: AuditTrail) -> None:
    # the leak: the record was untracked because the dict it held was untracked
    # when it was built; the dict then gained a reference back to the record
    resource = unique()
    before = sys.getrefcount(resource)
    d: dict[str, Any] = {}
    rec = trail.build_record("UPDATE", user_id="u", resource_id=resource, context=d)
    d["self"] = rec
    del d, rec
    gc.collect()
    assert sys.getrefcount(resource) == before


def test_a_cycle_through_the_records_own_dict_is_freed(trail: AuditTrail) -> None:
    # the record holds a copy (the snapshot); a cycle made through that copy is collected
    resource = unique()
    before = sys.getrefcount(resource)
    rec = trail.build_record("UPDATE", user_id="u", resource_id=resource, context={},
                             new_values={"items": []})
    rec.context["self"] = rec
    rec.new_values["items"].append(rec)
    assert gc.is_tracked(rec)
    del rec
    gc.collect()
    assert sys.getrefcount(resource) == before


def test_records_of_atoms_only_leave_the_collector(trail: AuditTrail, speedups: Any) -> None:
    # strings, numbers, datetimes and None can reference nothing: such a record can never
    # be in a cycle, and the thousands queued cost no collection anything (the compiled
    # snapshot untracks them; Python code cannot)
    rec = trail.build_record("UPDATE", user_id="u", resource_id="r", success=False)
    assert not gc.is_tracked(rec)
    holding = trail.build_record("UPDATE", user_id="u", old_values={"timeout": 5})
    assert gc.is_tracked(holding)


def test_untrack_follows_cpythons_rule(speedups: Any) -> None:
    # an untracked-now dict does not qualify (it can gain a reference later)...
    assert not gc.is_tracked({"a": 1})
    assert gc.is_tracked(speedups.untrack(tuple(["a", {"a": 1}])))
    # ...an untracked tuple of atoms does
    inner = tuple(["x", 1])
    assert not gc.is_tracked(speedups.untrack(inner))
    assert not gc.is_tracked(speedups.untrack(tuple(["a", inner, None, 1.5])))
    assert gc.is_tracked(speedups.untrack(tuple(["a", tuple(["b", []])])))
