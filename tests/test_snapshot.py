"""A record is a snapshot of the call: later changes to the caller's objects never reach it."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from otel_audit import AuditTrail
from otel_audit.compat import AuditTrailService
from otel_audit.record import NORMALISATION_KEY, SNAPSHOT_ATOMS, AuditRecord, snapshot

Factory = Callable[..., AuditTrail]

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def nested() -> dict[str, Any]:
    return {"a": {"b": [1, {"c": "x"}]}, "t": (1, [2]), "n": None, "f": 1.5}


def mutate(value: dict[str, Any]) -> None:
    value["a"]["b"][1]["c"] = "changed"
    value["a"]["b"].append("more")
    value["t"][1].append(3)
    value["added"] = True
    del value["n"]


def stored_one(trail: AuditTrail) -> AuditRecord:
    assert trail.flush(10)
    [stored] = trail.records()
    return stored


EXPECTED = {"a": {"b": [1, {"c": "x"}]}, "t": [1, [2]], "n": None, "f": 1.5}


def test_mutation_after_record_does_not_reach_the_store(trail: AuditTrail) -> None:
    old, new, changes, context = nested(), nested(), nested(), nested()
    rec = trail.record("UPDATE", user_id="u", old_values=old, new_values=new,
                       changes=changes, context=context)
    assert rec is not None
    for value in (old, new, changes, context):
        mutate(value)
    # the returned record is the snapshot too
    assert rec.new_values["a"]["b"][1]["c"] == "x"
    stored = stored_one(trail)
    assert stored.old_values == EXPECTED
    assert stored.new_values == EXPECTED
    assert stored.changes == EXPECTED
    assert stored.context == EXPECTED


def test_mutation_from_another_thread_does_not_reach_the_store(trail: AuditTrail) -> None:
    values = nested()
    recorded = threading.Event()
    changed = threading.Event()

    def other() -> None:
        recorded.wait(10)
        mutate(values)
        changed.set()

    thread = threading.Thread(target=other)
    thread.start()
    trail.record("UPDATE", user_id="u", new_values=values)
    recorded.set()
    assert changed.wait(10)
    thread.join(10)
    assert values["added"] is True  # the other thread did change the caller's dict
    assert stored_one(trail).new_values == EXPECTED


def test_a_writer_thread_mutating_throughout_never_breaks_a_record(trail: AuditTrail) -> None:
    # another thread changes the dict all the time: each record holds one whole state of it
    shared: dict[str, Any] = {"items": [], "n": 0}
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            shared["items"] = [i] * (i % 7)
            shared["n"] = i
            shared[f"k{i % 50}"] = i

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        recs = [trail.record("UPDATE", user_id="u", new_values=shared) for _ in range(200)]
    finally:
        stop.set()
        thread.join(10)
    assert all(r is not None for r in recs)
    assert trail.flush(10)
    assert trail.stats().written == 200
    assert trail.stats().failed == 0


def test_action_scope_values_are_taken_when_the_block_exits(trail: AuditTrail) -> None:
    values = {"items": [1, 2]}
    with trail.action("UPDATE", user_id="u", resource_type="tool") as scope:
        scope.new_values = values
        values["items"].append(3)  # inside the block: part of the action
    values["items"].append(4)  # after the call: not
    assert scope.record is not None
    assert stored_one(trail).new_values == {"items": [1, 2, 3]}


def test_build_record_then_submit_holds_the_values_of_the_build(trail: AuditTrail) -> None:
    values = {"items": [1]}
    rec = trail.build_record("UPDATE", user_id="u", new_values=values)
    values["items"].append(2)
    trail.submit(rec)
    values["items"].append(3)
    assert stored_one(trail).new_values == {"items": [1]}


def test_compat_methods_snapshot_their_values(trail: AuditTrail) -> None:
    service = AuditTrailService(trail)
    old, new = {"a": {"x": 1}}, {"a": {"x": 2}}
    details = {"why": ["first"]}
    service.log_crud_operation("UPDATE", "tool", "t1", "u", old_values=old, new_values=new)
    service.log_action("EXECUTE", "tool", "t2", "u", details=details)
    old["a"]["x"] = 100
    new["a"]["x"] = 200
    details["why"].append("second")
    assert trail.flush(10)
    stored = {r.resource_id: r for r in trail.records()}
    assert stored["t1"].old_values == {"a": {"x": 1}}
    assert stored["t1"].new_values == {"a": {"x": 2}}
    assert stored["t1"].changes == {"a.x": {"old": 1, "new": 2}}
    assert stored["t2"].context == {"details": {"why": ["first"]}}


class Box:
    """A mutable object: its repr at the call is what is stored."""

    def __init__(self) -> None:
        self.state = "at the call"

    def __repr__(self) -> str:
        return f"Box({self.state})"


def test_odd_values_are_converted_at_the_call_and_noted(trail: AuditTrail) -> None:
    box = Box()
    tags = {"b", "a"}
    rec = trail.record("UPDATE", user_id=box, new_values={"box": box, "tags": tags},  # type: ignore[arg-type]
                       resource_id=box)  # type: ignore[arg-type]
    assert rec is not None
    box.state = "later"
    tags.add("c")
    stored = stored_one(trail)
    assert stored.user_id == "Box(at the call)"
    assert stored.resource_id == "Box(at the call)"
    assert stored.new_values == {"box": "Box(at the call)", "tags": ["a", "b"]}
    notes = stored.context[NORMALISATION_KEY]
    assert {"field": "user_id", "kind": "converted", "type": "Box"} in notes
    assert {"field": "new_values.box", "kind": "repr", "type": "Box"} in notes
    assert {"field": "new_values.tags", "kind": "converted", "type": "set"} in notes


def test_immutable_values_are_shared_not_copied() -> None:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    atoms = {"s": "x", "i": 10**30, "d": decimal.Decimal("1.5"), "u": uuid.UUID(int=3),
             "w": when, "b": b"raw", "e": Colour.RED, "t": ("a", 1)}
    rec = make(new_values=atoms)
    snap = snapshot(rec)
    assert snap.new_values == atoms and snap.new_values is not atoms
    for key, value in atoms.items():
        assert snap.new_values[key] is value
    plain = make(resource_id="r")
    assert snapshot(plain) is plain  # nothing to copy: the record itself


class Colour(enum.Enum):
    RED = "red"


def make(**fields: Any) -> AuditRecord:
    base: dict[str, Any] = {"id": "0" * 32, "timestamp": NOW, "action": "READ", "user_id": "u"}
    base.update(fields)
    return AuditRecord(**base)


DEEP: Any = "x"
for _ in range(40):
    DEEP = [DEEP]


class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __bool__(self) -> bool:
        raise RuntimeError("no truth")


@pytest.mark.parametrize("record", [
    make(new_values=nested(), context={"k": [1, 2]}),
    make(new_values={"s": {3, 1}, "h": Hostile(), 1: "int key"}, success=Hostile()),
    make(old_values=[{"x": (1, [2])}], user_agent=Box(), timestamp="yesterday"),
    make(changes={"deep": DEEP}),
    make(new_values={"od": dict(a=1)}, schema_version=Hostile(), requires_review=[1]),
], ids=["plain", "hostile", "odd-columns", "deep", "flags"])
def test_compiled_and_pure_snapshots_agree(speedups: Any, record: AuditRecord) -> None:
    compiled = speedups.snapshot(record, SNAPSHOT_ATOMS, enum.EnumType, snapshot)
    pure = snapshot(record)
    assert _comparable(compiled) == _comparable(pure)
    assert compiled.new_values is not record.new_values or record.new_values is None


def _comparable(record: AuditRecord) -> dict[str, Any]:
    out = record._asdict()
    if not isinstance(out["timestamp"], dt.datetime) or out["timestamp"] != NOW:
        out["timestamp"] = "now"  # converted at the call: the clocks differ
    return out


def test_the_snapshot_keeps_a_cycle_it_can_not_copy_as_a_note() -> None:
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    snap = snapshot(make(context=loop))
    assert snap.context["self"] == "<cycle>"
    assert {"field": "context.self", "kind": "cycle"} in snap.context[NORMALISATION_KEY]
    loop["name"] = "changed"
    assert snap.context["name"] == "loop"


class UnhashableType(type):
    """A metaclass whose classes cannot be hashed or compared: looking a value's type up
    in a set runs this code."""

    def __hash__(cls) -> int:
        raise RuntimeError("hash")

    def __eq__(cls, other: object) -> bool:
        raise RuntimeError("eq")


class Strange(metaclass=UnhashableType):
    def __repr__(self) -> str:
        return "Strange()"


def test_a_type_that_cannot_be_hashed_is_converted_at_the_call(trail: AuditTrail) -> None:
    values = {"s": Strange(), "plain": [1]}
    rec = trail.record("UPDATE", user_id="u", resource_id=Strange(),  # type: ignore[arg-type]
                       new_values=values)
    assert rec is not None
    values["plain"].append(2)
    stored = stored_one(trail)
    # the abstract-class checks of json_safe hash the type: the last resort, noted
    assert stored.new_values == {"s": "<unrepresentable Strange>", "plain": [1]}
    assert {"field": "new_values.s", "kind": "unrepresentable",
            "type": "Strange"} in stored.context[NORMALISATION_KEY]
    assert stored.resource_id == "Strange()"
