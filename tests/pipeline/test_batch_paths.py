"""The column-by-column batch paths give exactly what the record-by-record paths give.

Redaction (:meth:`Redactor.redact_batch`), normalisation (:func:`plain_texts`) and
sealing (``ChainSealer`` on a plain batch) each have a fast path over a whole batch;
whatever a batch holds, the result must equal the per-record path's.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_audit.integrity.canonical import _dumps, _plain_bytes, chain_hash
from otel_audit.integrity.chain import ChainSealer
from otel_audit.record import AuditRecord, normalise, plain_texts
from otel_audit.redact import Redactor
from otel_audit.store.writer import PreparedRecord

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC)

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
_odd_text = st.sampled_from(["", "x\x00y", "\ud800", "a" * 300, "ключ", "1234567890123456789"])
_scalars = (st.none() | st.booleans() | st.integers(-(10**20), 10**20)
            | st.floats(allow_nan=True, allow_infinity=True) | _text | _odd_text)
_keys = st.sampled_from(["enabled", "timeout", "password", "email", "api-key", "name",
                         "123", "-1", "a\x00b"]) | _text
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=8,
)
_field_value = (st.none() | st.dictionaries(_keys, _scalars, max_size=4) | _json
                | st.sampled_from([uuid.UUID(int=7), {1: "a"}, {"t": NOW}, ("a", 1)]))
_column = st.none() | _text | _odd_text | st.integers(0, 9)


#: every digit of the timestamp text the compiled sealer writes
_any_time = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                         timezones=st.just(dt.UTC))


@st.composite
def records(draw: st.DrawFn, plain: bool) -> AuditRecord:
    """A record; ``plain`` ones are the common case (short strings, flat dicts)."""
    if plain:
        printable = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=8)
        values = st.none() | st.dictionaries(
            st.sampled_from(["enabled", "timeout", "name", "owner", "email"]),
            st.none() | st.booleans() | st.integers(-1000, 1000) | printable, max_size=4)
        strings = st.none() | printable.filter(bool)
    else:
        values, strings = _field_value, _column
    return AuditRecord(
        id=uuid.uuid4().hex,
        timestamp=draw(st.sampled_from([NOW, NOW.replace(tzinfo=None)]) if not plain
                       else st.just(NOW) | _any_time),
        action=draw(st.sampled_from(["UPDATE", "READ"]) | (strings if not plain else st.just("X"))),
        user_id=draw(st.sampled_from(["alice", "bob"]) | (strings if not plain else st.just("u"))),
        resource_type=draw(strings),
        resource_id=draw(strings),
        user_email=draw(strings),
        client_ip=draw(strings),
        request_method=draw(strings),
        error_message=draw(strings),
        old_values=draw(values),
        new_values=draw(values),
        changes=draw(values),
        context=draw(values),
        requires_review=draw(st.booleans() if plain else st.booleans() | st.none()),
        success=draw(st.booleans()),
        service_name="svc",
    )


def _batches(plain: bool) -> Any:
    return st.lists(records(plain), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=_batches(plain=False) | _batches(plain=True))
def test_plain_texts_equal_normalise_record_by_record(batch: list[AuditRecord]) -> None:
    for compiled in (True, False):  # the compiled extension and the Python columns
        texts = plain_texts(batch, compiled=compiled)
        if texts is None:
            continue  # the batch goes record by record: nothing to compare
        for record, batch_texts in zip(batch, texts, strict=True):
            assert normalise(record) == (record, batch_texts)


_tree_keys = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
_tree = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _tree_keys
    | st.floats(allow_nan=False) | st.sampled_from([uuid.UUID(int=7), NOW, 1e16, -0.0]),
    lambda inner: (st.lists(inner, max_size=3) | st.tuples(inner, inner)
                   | st.dictionaries(_tree_keys, inner, max_size=4)),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old=st.dictionaries(_tree_keys, _tree, max_size=5), new=st.lists(_tree, max_size=4))
def test_compiled_texts_are_the_stdlib_encoders(old: dict[str, Any], new: list[Any]) -> None:
    # the compiled path serialises trees of str, int, bool and None through orjson and
    # anything else through the stdlib encoder; the texts are the stdlib encoder's
    record = AuditRecord(id="1", timestamp=NOW, action="UPDATE", user_id="u",
                         old_values=old, new_values=new)
    compiled = plain_texts([record], compiled=True)
    assert compiled == plain_texts([record], compiled=False)
    if compiled is not None:
        assert normalise(record) == (record, compiled[0])


@settings(max_examples=50, deadline=None)
@given(batch=_batches(plain=True))
def test_plain_batches_take_the_column_path(batch: list[AuditRecord]) -> None:
    for compiled in (True, False):
        texts = plain_texts(batch, compiled=compiled)
        assert texts is not None
        assert [normalise(r)[1] for r in batch] == texts


def test_one_odd_record_sends_the_batch_record_by_record() -> None:
    good = AuditRecord(id="a" * 32, timestamp=NOW, action="READ", user_id="u",
                       old_values={"b": 1})
    for odd in (good._replace(request_method="X" * 11), good._replace(old_values={1: "a"}),
                good._replace(user_agent="nul\x00"), good._replace(timestamp=NOW.replace(
                    tzinfo=None)), good._replace(new_values={"n": float("nan")}),
                good._replace(context={"u": uuid.UUID(int=1)}), good._replace(success=1)):
        for compiled in (True, False):
            assert plain_texts([good, odd], compiled=compiled) is None
            assert plain_texts([good, good], compiled=compiled) == [normalise(good)[1]] * 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=_batches(plain=False) | _batches(plain=True),
       allow=st.sampled_from([(), ("api-key",)]))
def test_redact_batch_equals_record_by_record(batch: list[AuditRecord],
                                              allow: tuple[str, ...]) -> None:
    for mode, key in (("mask", None), ("hmac", "k")):
        redactor = Redactor(mode, allow=allow, hmac_key=key)
        assert redactor.redact_batch(batch) == [Redactor(mode, allow=allow, hmac_key=key)(r)
                                                for r in batch]


def _prepared(batch: list[AuditRecord]) -> list[PreparedRecord]:
    return [PreparedRecord(*normalise(record)) for record in batch]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=_batches(plain=False) | _batches(plain=True),
       key=st.sampled_from([None, b"k" * 32, b"long key " * 9]))
def test_sealing_a_batch_equals_sealing_record_by_record(batch: list[AuditRecord],
                                                          key: bytes | None) -> None:
    prepared = _prepared(batch)
    salts = os.urandom(16 * len(prepared)).hex()
    by_record = ChainSealer(service_name="s", stream="one", hmac_key=key,
                            personal_keys=["email"])
    by_record._resumed = True
    expected = [by_record._seal(p, salts[32 * i:32 * i + 32]) for i, p in enumerate(prepared)]
    for compiled in (True, False):  # the compiled extension and the Python columns
        sealer = ChainSealer(service_name="s", stream="one", hmac_key=key,
                             personal_keys=["email"])
        sealer._resumed = True
        if not sealer._plain(prepared):
            continue
        sealed = sealer._seal_columns(prepared, salts, compiled=compiled)
        assert sealed == expected
        assert [type(p) for p in sealed] == [PreparedRecord] * len(sealed)
        assert sealer.head == by_record.head
        for p in sealed:
            assert p.row is not None and chain_hash(p.row, key) == p.hash


def test_the_compiled_paths_are_in_use(speedups: Any) -> None:
    # where the extension is built, the pipeline uses it (the tests above compare it)
    from otel_audit import record
    from otel_audit.integrity import chain

    assert chain._seal_plain is speedups.seal_plain
    assert record._compiled_plain_texts is speedups.plain_texts


def test_records_of_plain_values_leave_the_cycle_collector(speedups: Any) -> None:
    # what CPython does for exact tuples at their first collection, done at creation for
    # records (queued by the thousand) and the rows sealed from them
    import gc

    from otel_audit import AuditTrail

    trail = AuditTrail("sqlite://", enabled=True)
    try:
        plain = trail.build_record("UPDATE", user_id="u", resource_id="t")
        assert not gc.is_tracked(plain)
        # a record holding any container stays tracked (CPython's rule): whoever reaches
        # the container can make a cycle through it (tests/test_record_gc.py)
        holding = trail.build_record("UPDATE", user_id="u", old_values={"timeout": 5})
        assert gc.is_tracked(holding)
        nested = trail.build_record("UPDATE", user_id="u", new_values={"a": [1, 2]})
        assert gc.is_tracked(nested)
        looped = trail.build_record("UPDATE", user_id="u", context={})
        looped.context["self"] = looped
        assert gc.is_tracked(looped)
        sealer = ChainSealer(service_name="s")
        sealer._resumed = True
        sealed = sealer._seal_columns(_prepared([holding]), os.urandom(16).hex())
        # the row (strings, numbers, None) leaves; the prepared record holds dicts
        assert gc.is_tracked(sealed[0]) and not gc.is_tracked(sealed[0].row)
    finally:
        trail.shutdown()
    # tuples and subclasses that could hold more than their items are left alone
    assert speedups.untrack(looped) is looped
    assert gc.is_tracked(speedups.untrack(("a", [1])))
    assert not gc.is_tracked(speedups.untrack(tuple(["a", 1])))

    class Extra(tuple):  # type: ignore[type-arg]
        pass

    extra = Extra(("a", 1))
    assert gc.is_tracked(speedups.untrack(extra))  # it has an instance __dict__


def test_untracked_records_are_freed() -> None:
    import sys

    from otel_audit import AuditTrail

    trail = AuditTrail("sqlite://", enabled=True)
    try:
        resource = "".join(["tool-", str(uuid.uuid4())])  # a string only this test holds
        before = sys.getrefcount(resource)
        records = [trail.build_record("UPDATE", user_id="u", resource_id=resource)
                   for _ in range(100)]
        assert sys.getrefcount(resource) == before + 100
        del records  # deallocated by reference counting, untracked or not
        assert sys.getrefcount(resource) == before
    finally:
        trail.shutdown()


_pieces = [*'0123456789-.,:"{}[] aéeE✓', "-0.0", '"email":', "email", "\U0001f600",
           "123456789012345", "1e+16", "5E-7"]  # a digit before e or E: an exponent
_special_text = st.lists(st.sampled_from(_pieces), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.dictionaries(st.sampled_from(["old_values", "new_values", "context"]),
                                      st.none() | _special_text, max_size=3),
                      min_size=1, max_size=4))
def test_compiled_plain_check_equals_the_python_one(texts: list[dict[str, str | None]]) -> None:
    # "-0.0", exponents and personal-key marks, found by both paths alike
    sealer = ChainSealer(service_name="s", personal_keys=["email"])
    batch = [PreparedRecord(AuditRecord(id=str(i), timestamp=NOW, action="X", user_id="u"),
                            {"old_values": None, "new_values": None, "changes": None,
                             "context": None, **t})
             for i, t in enumerate(texts)]
    assert sealer._plain(batch, compiled=True) == sealer._plain(batch, compiled=False)


def test_plain_batches_are_sealed_column_by_column() -> None:
    batch = [AuditRecord(id=uuid.uuid4().hex, timestamp=NOW, action="UPDATE", user_id="u",
                         old_values={"timeout": i}, user_email="u@example.com")
             for i in range(5)]
    sealer = ChainSealer(service_name="s", personal_keys=["email"])
    prepared = _prepared(batch)
    assert sealer._plain(prepared)
    # a personal key inside a document, a number to canonicalise, an earlier seal: not plain
    assert not sealer._plain(_prepared([batch[0]._replace(new_values={"email": "x"})]))
    assert not sealer._plain(_prepared([batch[0]._replace(new_values={"n": 1e17})]))
    # an integer of any size is stored as written (format otel-audit/2): plain
    assert sealer._plain(_prepared([batch[0]._replace(new_values={"n": 10**17})]))
    assert not sealer._plain(sealer(prepared))


@pytest.mark.parametrize("start", range(0, 0x110000, 0x8800))
def test_orjson_payload_bytes_are_the_stdlib_encoders(start: int) -> None:
    # every code point (surrogates excepted) in the strings a payload holds
    chars = "".join(chr(c) for c in range(start, min(start + 0x8800, 0x110000))
                    if not 0xD800 <= c <= 0xDFFF)
    for items in ([chars, 1, None, -5, 2**62, [chars[:50]]], ["\"\\/\b\f\n\r\t\x7f", 0]):
        assert _plain_bytes(items) == _dumps(items).encode()
    # what orjson refuses goes to the stdlib encoder, which decides
    assert _plain_bytes([2**70]) == _dumps([2**70]).encode()
    with pytest.raises(TypeError):
        _plain_bytes([NOW])
