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


def test_the_queued_copy_of_a_record_of_untracked_values(speedups: Any,
                                                         trail: AuditTrail) -> None:
    # record() queues this copy: outside the collector when every value is (atoms and
    # the flat dicts the snapshot made); the record it returns stays tracked
    rec = trail.build_record("UPDATE", user_id="u", old_values={"timeout": 5},
                             new_values={"timeout": 6}, context={})
    queued = speedups.queued_copy(rec)
    assert queued == rec and queued is not rec and type(queued) is type(rec)
    assert all(a is b for a, b in zip(queued, rec, strict=True))  # the same values
    assert not gc.is_tracked(queued) and gc.is_tracked(rec)
    # anything tracked inside, an untracked record, or another type: the record itself
    kept: tuple[Any, ...] = (
        trail.build_record("UPDATE", user_id="u", new_values={"a": [1]}),
        trail.build_record("UPDATE", user_id="u", old_values={"a": {"b": 1}}),
        trail.build_record("UPDATE", user_id="u", resource_id="r"),
        ("a", {}), "record")
    for same in kept:
        assert speedups.queued_copy(same) is same

    class Extra(tuple):  # type: ignore[type-arg]
        pass

    extra = Extra(["x"] * 29 + [{}])
    assert speedups.queued_copy(extra) is extra  # it has an instance __dict__


@pytest.mark.parametrize("values", [
    {"old_values": {"a": 1}, "new_values": {"a": "\u2028 \" '\\"}, "context": {}},
    {"new_values": {"max": 2**63 - 1, "min": -(2**63), "f": 1.5, "t": ("a", 1)}},
    {"changes": [[[1]]], "delegation_chain": [{"principal": "p", "via": "v"}], "success": False},
], ids=["plain", "edges", "lists"])
def test_the_trail_stores_what_record_returned(make_trail: Any, values: dict[str, Any]) -> None:
    # both paths and stores: what is stored is what record() returned, whether the
    # queued record is its copy (compiled) or the record itself (pure Python)
    trail = make_trail()
    rec = trail.record("UPDATE", user_id="u", **values)
    assert rec is not None and trail.flush(10)
    [stored] = trail.records()
    for name in ("id", "user_id", "old_values", "new_values", "changes", "success",
                 "delegation_chain"):
        expected = getattr(rec, name)
        if name == "new_values" and expected is not None and "t" in expected:
            expected = {**expected, "t": ["a", 1]}  # JSON has no tuples
        assert getattr(stored, name) == expected, name


def test_a_cycle_through_a_recorded_records_dict_is_freed(trail: AuditTrail) -> None:
    # the record returned by record() (its queued copy shares its dicts) in a cycle
    resource = unique()
    before = sys.getrefcount(resource)
    rec = trail.record("UPDATE", user_id="u", resource_id=resource, context={},
                       old_values={"a": 1})
    assert rec is not None
    rec.context["self"] = rec
    rec.old_values["also"] = [rec]
    del rec
    for _ in range(2):  # the worker and the store stage let go of the batch before last
        trail.record("READ", user_id="u")
        assert trail.flush(10)
    gc.collect()
    assert sys.getrefcount(resource) == before


def test_an_exporter_sees_the_record_returned(speedups: Any) -> None:
    # with an exporter (the application's code sees every record) nothing is copied
    from otel_audit.testing import InMemoryAuditExporter

    exporter = InMemoryAuditExporter()
    trail = AuditTrail("sqlite://", exporter=exporter)
    try:
        rec = trail.record("UPDATE", user_id="u", old_values={"a": 1})
        assert rec is not None and trail.flush(10)
        [exported] = exporter.get_finished_records()
        assert exported is rec and gc.is_tracked(exported)
    finally:
        trail.shutdown(5)


def test_only_the_trails_own_stages_see_the_queued_copy(speedups: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # a post-write hook added after the trail was made (the application's) sees the
    # record record() returned, in the collector, so a cycle it makes is freed; while
    # only the library's stages are there, they see the untracked copy
    trail = AuditTrail("sqlite://", auto_migrate=True)
    pipeline = trail.pipeline
    queued: list[Any] = []
    submit = pipeline.submit

    def watched(item: Any) -> None:
        queued.append(item)
        submit(item)

    monkeypatch.setattr(pipeline, "submit", watched)
    seen: list[Any] = []
    try:
        assert pipeline.own_code_only()
        hook = lambda batch: seen.extend(p.record for p in batch)  # noqa: E731
        pipeline.on_written.append(hook)
        assert not pipeline.own_code_only()
        rec = trail.record("UPDATE", user_id="u", old_values={"a": 1})
        assert rec is not None and trail.flush(10)
        assert seen == [rec] and seen[0] is rec and gc.is_tracked(seen[0])
        assert queued[-1] is rec
        # the hook gone: the library's own stages alone, the copy is queued again
        pipeline.on_written.remove(hook)
        assert pipeline.own_code_only()
        rec = trail.record("UPDATE", user_id="u", old_values={"a": 2})
        assert rec is not None and trail.flush(10)
        assert queued[-1] == rec and queued[-1] is not rec and not gc.is_tracked(queued[-1])
        assert gc.is_tracked(rec)
        # a transform or a sealer of the application's counts as well
        pipeline.transforms.append(lambda record: record)
        assert not pipeline.own_code_only()
        pipeline.transforms.clear()
        pipeline.sealers.append(lambda batch: batch)
        assert not pipeline.own_code_only()
    finally:
        trail.shutdown(5)
