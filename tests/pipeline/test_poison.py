"""No value stops the trail: arbitrary nested Python values through ``record()`` and
``submit()``, on SQLite and PostgreSQL. Every record is stored or counted (and the
counted ones are in quarantine), a good record after it lands, the worker never dies and
the chain verifies. The suite runs once with the compiled paths and once with
``OTEL_AUDIT_PUREPYTHON=1``: this test covers both."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from otel_audit import AuditTrail
from otel_audit.integrity.verify import verify_trail
from otel_audit.record import AuditRecord
from otel_audit.store.schema import audit_trails

Factory = Callable[..., AuditTrail]


class Hostile:
    """An object whose dunder methods raise (the ones ``kinds`` names)."""

    def __init__(self, kinds: frozenset[str]) -> None:
        self.kinds = kinds

    def _maybe(self, name: str) -> None:
        if name in self.kinds:
            raise RuntimeError(f"{name} refuses")

    def __repr__(self) -> str:
        self._maybe("repr")
        return "Hostile()"

    def __str__(self) -> str:
        self._maybe("str")
        return "hostile"

    def __bool__(self) -> bool:
        self._maybe("bool")
        return True

    def __hash__(self) -> int:
        self._maybe("hash")
        return 1

    def __eq__(self, other: object) -> bool:
        self._maybe("eq")
        return self is other

    def __lt__(self, other: object) -> bool:
        self._maybe("lt")
        return False

    def __len__(self) -> int:
        self._maybe("len")
        return 1

    def __iter__(self) -> Any:
        self._maybe("iter")
        return iter(())

    def __index__(self) -> int:
        self._maybe("index")
        return 1


class BadDict(dict[Any, Any]):
    def items(self) -> Any:
        raise RuntimeError("items refuses")

    def keys(self) -> Any:
        raise RuntimeError("keys refuses")


class BadList(list[Any]):
    def __iter__(self) -> Any:
        raise RuntimeError("iter refuses")


class LoudInt(int):
    def __repr__(self) -> str:
        raise RuntimeError("repr refuses")

    __str__ = __repr__


hostile = st.builds(Hostile, st.frozensets(st.sampled_from(
    ["repr", "str", "bool", "hash", "eq", "lt", "len", "iter", "index"])))
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
#: integers past what str() converts (4,300 digits); built lazily, so no repr prints them
huge = st.integers(4301, 6000).map(lambda digits: 10**digits) | st.integers(4301, 5000).map(
    lambda digits: -(10**digits) + 7)
numbers = st.one_of(
    st.integers(), huge, st.builds(LoudInt, st.integers()),
    st.floats(), st.decimals(), st.just(decimal.Decimal("sNaN")), st.complex_numbers(),
    st.fractions(),
)
timestamps = st.one_of(
    st.datetimes(), st.datetimes(timezones=st.timezones()),
    st.just(dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))),
    st.just(dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=-5)))),
    st.dates(), st.times(),
)
hashables = st.one_of(any_text, st.integers(), huge, st.booleans(), st.none(),
                      st.floats(), st.just(decimal.Decimal("NaN")), st.tuples(st.integers()),
                      st.frozensets(st.integers(), max_size=2), hostile.filter(
                          lambda h: "hash" not in h.kinds and "eq" not in h.kinds))
scalars = st.one_of(st.none(), st.booleans(), any_text, numbers, timestamps,
                    st.binary(max_size=10), st.uuids(), hostile)


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if depth % 2 else {"d": value}
    return value


def _cycle(kind: int) -> Any:
    if kind == 0:
        loop: dict[str, Any] = {}
        loop["me"] = loop
        return loop
    items: list[Any] = []
    items.append(items)
    return items


values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.tuples(children, children),
        st.dictionaries(hashables, children, max_size=3),
        st.sets(st.one_of(st.integers(), st.just(decimal.Decimal("NaN")),
                          st.just(decimal.Decimal(1)), any_text), max_size=3),
        st.builds(BadDict, st.dictionaries(any_text, children, max_size=2)),
        st.builds(BadList, st.lists(children, max_size=2)),
    ),
    max_leaves=12,
)
values_plus = st.one_of(values, st.integers(20, 200).map(_deep), st.integers(0, 1).map(_cycle))
versions = st.one_of(st.integers(), st.just(2**70), st.just(-(2**40)), huge, any_text,
                     hostile, st.none())

_trails: dict[int, tuple[AuditTrail, Path]] = {}


def _trail(make_trail: Factory, tmp_path: Path) -> tuple[AuditTrail, Path]:
    # one trail per test run (Hypothesis calls the body many times per fixture)
    key = id(make_trail)
    if key not in _trails:
        _trails.clear()
        spool = tmp_path / "state" / "spool"
        _trails[key] = (make_trail(flush_interval=0.005, spool_dir=str(spool)), spool)
    return _trails[key]


def _stored(trail: AuditTrail, record_id: str) -> int:
    with trail.writer.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_trails).where(
            audit_trails.c.id == record_id)).scalar_one())


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(old=values_plus, new=values_plus, ctx=values_plus, field=values, odd=scalars,
       when=timestamps, version=versions)
def test_no_value_stops_the_trail(make_trail: Factory, tmp_path: Path, old: Any, new: Any,
                                  ctx: Any, field: Any, odd: Any, when: Any,
                                  version: Any) -> None:
    trail, _spool = _trail(make_trail, tmp_path)
    trail.record("BAD", user_id=field, resource_id=odd, service_name=field,
                 success=odd, requires_review=odd, old_values=old, new_values=new,
                 changes={"k": new}, context=ctx, timestamp=when, error_message=odd)
    trail.submit(AuditRecord(id=uuid.uuid4().hex, timestamp=when, action=field, user_id=odd,
                             resource_type=field, old_values=old, new_values=new,
                             context=ctx, success=odd, schema_version=version))
    good = trail.record("GOOD", user_id="u", new_values={"after": True})
    assert trail.flush(30)
    stats = trail.stats()
    assert stats.written + stats.failed + stats.dropped == stats.enqueued
    assert stats.quarantined == stats.failed  # each counted one is kept for inspection
    assert stats.worker_restarts == 0  # nothing got past the guards to the loop
    assert _stored(trail, good.id) == 1
    report = verify_trail(trail.writer.engine)
    assert report.ok, report.findings[:3]


@pytest.mark.parametrize("value", [
    {True: 1, "True": 2}, 10**5000, {decimal.Decimal("NaN"), decimal.Decimal(1)},
    dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5))), Hostile(frozenset(
        ["repr", "str", "bool", "hash", "eq", "lt", "len", "iter", "index"])), "a\ud800b",
], ids=["bool-key", "huge-int", "nan-set", "overflowing-time", "hostile", "surrogate"])
def test_the_reported_values_never_stop_the_trail(make_trail: Factory, value: Any) -> None:
    trail = make_trail()
    trail.record("BAD", user_id="", context=value, success=value, service_name=value,
                 timestamp=value if isinstance(value, dt.datetime) else None)
    trail.submit(AuditRecord(id=uuid.uuid4().hex, timestamp=dt.datetime.now(dt.UTC),
                             action="BAD", user_id="u", schema_version=2**70))
    good = trail.record("GOOD", user_id="u")
    assert trail.flush(10)
    stats = trail.stats()
    assert (stats.written, stats.failed, stats.worker_restarts) == (3, 0, 0)
    assert _stored(trail, good.id) == 1
    assert verify_trail(trail.writer.engine).ok
