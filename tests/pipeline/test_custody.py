"""The pipeline's custody of sealed records: out of the cycle collector while only the
library's code can reach them, back in it before an application's code sees them."""

from __future__ import annotations

import gc
import sys
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from otel_audit import AuditTrail
from otel_audit.pipeline.prepare import python_custody
from otel_audit.prepared import PreparedRecord


def _seen_by(trail: AuditTrail, hook: Any) -> list[bool]:
    """Record three records through ``trail`` with ``hook`` among its post-write hooks;
    whether each record was in the cycle collector when the hook saw it."""
    tracked: list[bool] = []
    done = threading.Event()

    def note(batch: Sequence[PreparedRecord]) -> None:
        tracked.extend(gc.is_tracked(p) for p in batch)
        done.set()

    trail.pipeline.on_written.append(hook or note)
    if hook is not None:
        trail.pipeline.on_written.append(note)
    for i in range(3):
        trail.record("UPDATE", user_id="u", resource_id=f"r{i}", old_values={"a": i})
    assert trail.flush(30)
    assert done.wait(30)
    return tracked


class _OwnHook:
    """Stands for the library's own hooks (DuplicateSeals, PeriodicSeals ...)."""

    def __init__(self) -> None:
        self.tracked: list[bool] = []

    def __call__(self, batch: Sequence[PreparedRecord]) -> None:
        self.tracked.extend(gc.is_tracked(p) for p in batch)


_OwnHook.__module__ = "otel_audit.integrity.install"  # as if it were the library's


def test_held_out_of_the_collector_until_an_application_sees_them(speedups: Any) -> None:
    trail = AuditTrail("sqlite://")
    try:
        own = _OwnHook()
        trail.pipeline.on_written[:] = [own]  # the library's hooks only: held throughout
        trail.record("UPDATE", user_id="u", old_values={"a": 1})
        assert trail.flush(30)
        assert own.tracked == [False]
        # an application's hook: every record is back in the collector before it runs
        assert _seen_by(trail, None) == [True, True, True]
    finally:
        trail.shutdown()


def test_a_cycle_an_application_hook_makes_is_collected(speedups: Any) -> None:
    resource = "".join(["resource-", str(uuid.uuid4())])  # only this test holds it
    before = sys.getrefcount(resource)
    trail = AuditTrail("sqlite://")
    try:
        def loop(batch: Sequence[PreparedRecord]) -> None:
            for p in batch:
                texts: Any = p.texts
                texts["prepared"] = p  # prepared -> texts -> prepared

        trail.pipeline.on_written.append(loop)
        trail.record("UPDATE", user_id="u", resource_id=resource, old_values={"a": 1})
        assert trail.flush(30)
    finally:
        trail.shutdown()
    del trail
    gc.collect()
    assert sys.getrefcount(resource) == before


def test_custody_rule(speedups: Any) -> None:
    texts: dict[str, str | None] = {"old_values": "{}"}
    record: Any = ("id", {"a": 1})  # a record holding a container: tracked
    plain = PreparedRecord(record, dict(texts), "s", 1, "p", "h", "salt", None, None,
                           tuple(["s", 1, "x"]))
    gc.collect()  # CPython untracks the row (a tuple of atoms) at a collection
    assert not gc.is_tracked(plain.row)
    listed = PreparedRecord(record, dict(texts), "s", 1, "p", "h", "salt", ["pii"])
    tracked_row = PreparedRecord(record, dict(texts), row=("s", []))
    other_texts = PreparedRecord(record, ["not", "a", "dict"])  # type: ignore[arg-type]

    class Sub(PreparedRecord):
        __slots__ = ()

    sub = Sub(record, dict(texts))
    batch: list[Any] = [plain, listed, tracked_row, other_texts, sub, ("x", [])]
    assert all(map(gc.is_tracked, batch))
    speedups.custody(batch, PreparedRecord, True)
    assert [gc.is_tracked(p) for p in batch] == [False, True, True, True, True, True]
    speedups.custody(batch, PreparedRecord, False)
    assert all(map(gc.is_tracked, batch))
    speedups.custody(batch, PreparedRecord, False)  # tracking one tracked: left as it is
    assert all(map(gc.is_tracked, batch))
    unsealed = PreparedRecord(record, dict(texts))  # no row yet: held too
    speedups.custody([unsealed], PreparedRecord, True)
    assert not gc.is_tracked(unsealed)


def test_the_pure_twin_changes_nothing() -> None:
    p = PreparedRecord(("id", {"a": 1}), {})  # type: ignore[arg-type]
    batch = [p]
    assert python_custody(batch, PreparedRecord, True) is None
    assert batch == [p] and gc.is_tracked(p)
