"""Hostile input on SQLite and PostgreSQL: record() never raises, the stored value is the
documented normalisation of the (redacted) input, SQL-looking strings are plain data."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from otel_audit import AuditTrail
from otel_audit.record import AuditRecord, normalise
from otel_audit.redact import Redactor
from otel_audit.store.reader import row_to_record
from otel_audit.store.schema import RECORD_COLUMNS, audit_trails

Factory = Callable[..., AuditTrail]


class ReprRaises:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


# every code point, lone surrogates, NUL and control characters included
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
long_text = st.builds(lambda c, n: c * n, st.characters(exclude_categories=()),
                      st.integers(200, 3000))
keys = st.one_of(any_text, st.sampled_from(["password", "token", "Set-Cookie", "api_key"]))
scalars = st.one_of(
    # numbers within JSON's exact range (2**53): beyond it JSONB and the chain's canonical
    # form print them differently (docs/integrity.md)
    st.none(), st.booleans(), st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(min_value=-(2.0**53), max_value=2.0**53), st.sampled_from(
        [float("nan"), float("inf"), float("-inf")]), any_text, long_text,
    st.binary(max_size=20), st.datetimes(), st.decimals(allow_nan=False, places=3),
    st.builds(ReprRaises),
)
payloads = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(keys, children, max_size=4),
        st.frozensets(st.integers(-1000, 1000), max_size=3),
    ),
    max_leaves=25,
)


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return value


def _cyclic() -> Any:
    loop: dict[str, Any] = {"password": "p"}
    loop["me"] = [loop]
    return loop


payloads_plus = st.one_of(payloads, st.integers(30, 80).map(_deep), st.builds(_cyclic))


def _stored(trail: AuditTrail, record_id: str) -> AuditRecord:
    columns = [audit_trails.c[name] for name in RECORD_COLUMNS]
    with trail.writer.engine.connect() as conn:
        row = conn.execute(select(*columns).where(audit_trails.c.id == record_id)).mappings().one()
    return row_to_record(row)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(old=payloads_plus, new=payloads_plus, ctx=payloads_plus, text=any_text,
       long=long_text)
def test_record_never_raises_and_stores_the_documented_normalisation(
    make_trail: Factory, old: Any, new: Any, ctx: Any, text: str, long: str
) -> None:
    trail = _trail(make_trail)
    rec = trail.record(text or "A", user_id=text, resource_id=long, resource_type=text,
                       error_message=long, user_agent=text, old_values=old, new_values=new,
                       changes={"k": new}, context=ctx)
    assert rec is not None
    assert trail.flush(30)
    expected, texts = normalise(Redactor()(rec), max_record_bytes=trail.config.max_record_bytes)
    stored = _stored(trail, rec.id)
    for field in ("action", "user_id", "resource_id", "resource_type", "error_message",
                  "user_agent"):
        assert getattr(stored, field) == getattr(expected, field), field
    for field, text in texts.items():  # JSON fields: what the normaliser's JSON text says
        assert getattr(stored, field) == (None if text is None else json.loads(text)), field
    assert stored.timestamp == expected.timestamp
    assert trail.stats().failed == 0


_trails: dict[int, AuditTrail] = {}


def _trail(make_trail: Factory) -> AuditTrail:
    # one trail per test run (Hypothesis calls the test body many times per fixture)
    key = id(make_trail)
    if key not in _trails:
        _trails.clear()
        _trails[key] = make_trail(flush_interval=0.005)
    return _trails[key]


INJECTIONS = [
    "'; DROP TABLE audit_trails; --",
    "\" OR 1=1 --",
    "x' OR 'x'='x",
    "1); DELETE FROM audit_trails WHERE (1=1",
    "%s %(id)s ? :id $1",
    "\\'; SELECT pg_sleep(10); --",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_sql_injection_strings_are_stored_and_matched_literally(
    make_trail: Factory, payload: str
) -> None:
    trail = make_trail()
    decoy = trail.record("READ", user_id="someone-else", resource_type="t", resource_id="r")
    rec = trail.record(payload[:100], user_id=payload, resource_type=payload[:100],
                       resource_id=payload, resource_name=payload, user_email=payload,
                       team_id=payload[:36], client_ip=payload[:45], user_agent=payload,
                       request_path=payload, request_method=payload[:10],
                       new_values={payload: payload}, context={"q": payload},
                       error_message=payload, acting_as=payload)
    assert rec is not None and decoy is not None
    assert trail.flush(10)
    for filters in ({"user_id": payload}, {"resource_type": payload[:100]},
                    {"resource_id": payload}, {"action": payload[:100]}):
        found = trail.records(**filters)
        assert [r.id for r in found] == [rec.id], filters
        assert found[0].new_values == {payload: payload}
        assert found[0].user_agent == payload
    traced = trail.submit(trail.build_record("TRACED", user_id="u", trace_id=payload[:32]))
    assert [r.id for r in trail.records(trace_id=payload[:32])] == [traced.id]
    assert len(trail.records(limit=10)) == 3  # nothing dropped, nothing deleted
    assert trail.records(user_id="' OR '1'='1") == []


def test_many_types_survive(make_trail: Factory) -> None:
    trail = make_trail()
    rec = trail.record("A", user_id="u", new_values={
        "d": decimal.Decimal("1.5"), "t": dt.time(1, 2), "r": ReprRaises(), "b": b"\x00"})
    assert rec is not None
    [stored] = trail.records()
    assert stored.new_values == {"d": "1.5", "t": "01:02:00", "r": "<unrepresentable ReprRaises>",
                                 "b": "AA=="}


@pytest.mark.parametrize("size", [70_000, 300_000])
def test_very_long_values_are_stored_as_documented(make_trail: Factory, size: int) -> None:
    trail = make_trail()
    huge = "é\x00" * (size // 2)
    rec = trail.record("A", user_id="u" * 1000, resource_id=huge, error_message=huge,
                       new_values={"blob": huge, "password": huge}, context=[huge] * 3)
    assert rec is not None
    assert trail.flush(30)
    expected, texts = normalise(Redactor()(rec), max_record_bytes=trail.config.max_record_bytes)
    stored = _stored(trail, rec.id)
    assert stored.user_id == expected.user_id == "u" * 255
    assert stored.resource_id == expected.resource_id
    assert stored.error_message == expected.error_message
    for field, text in texts.items():
        assert getattr(stored, field) == (None if text is None else json.loads(text)), field
