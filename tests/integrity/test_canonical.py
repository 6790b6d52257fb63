"""The canonical serialisation: stable across stores, keyed hashing, personal digests."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from otel_audit.integrity.canonical import (
    EXACT_VERSION,
    GENESIS_HASH,
    INVALID,
    canonical_json,
    canonical_number,
    canonical_stored_json,
    chain_hash,
    hash_payload,
    personal_digest,
    personal_json_values,
)
from otel_audit.integrity.canonical_json import v1_stored_json
from otel_audit.record import AuditRecord, normalise
from otel_audit.store.writer import chain_row, create_store_engine

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


def test_canonical_json_is_compact_and_sorted() -> None:
    assert canonical_json('{"b": 1, "a": [1.5, "é", null]}') == '{"a":[1.5,"é",null],"b":1}'


@pytest.mark.parametrize(("stored", "rendered"), [
    ("1e+20", "100000000000000000000"),  # PostgreSQL numeric prints exponents in full
    ("-0.0", "0.0"),  # and has no negative zero
    ("12345678901234567", "12345678901234567"),
    ("1e-05", "0.00001"),
])
def test_numbers_survive_a_jsonb_round_trip(stored: str, rendered: str) -> None:
    assert canonical_json(f"[{stored}]") == canonical_json(f"[{rendered}]")
    # what the sealer stores is what PostgreSQL prints: already canonical
    assert canonical_json(f"[{rendered}]", strict=True) == f"[{rendered}]"
    assert canonical_stored_json(f"[{stored}]") == f"[{rendered}]"


#: Known answers of the canonical number spelling (docs/integrity.md).
NUMBER_VECTORS = [
    ("12", "12"), ("-0", "0"), ("-0.0", "0.0"), ("0.0", "0.0"), ("1.5", "1.5"),
    ("1.50", "1.50"), ("0.1", "0.1"), ("1e-1", "0.1"), ("1E2", "100"),
    ("1e+16", "10000000000000000"),
    ("1e-07", "0.0000001"), ("1.5e3", "1500"), ("1.50e1", "15.0"), ("-1.25e-2", "-0.0125"),
    ("100e-2", "1.00"), ("12345678901234567", "12345678901234567"),
    ("9223372036854775808", "9223372036854775808"), (str(10**40), str(10**40)),
    ("1.2345678901234568e+16", "12345678901234568"),
]


@pytest.mark.parametrize(("token", "spelling"), NUMBER_VECTORS)
def test_canonical_number_known_answers(token: str, spelling: str) -> None:
    assert canonical_number(token) == spelling
    assert canonical_json(f"[{token}]") == f"[{spelling}]"
    # the verifier accepts only the canonical spelling of a value
    if token == spelling:
        assert canonical_json(f"[{token}]", strict=True) == f"[{spelling}]"
    else:
        with pytest.raises(ValueError):
            canonical_json(f"[{token}]", strict=True)


@pytest.mark.parametrize("token", ["1e-1", "1E2", "-0", "-0.0", "1.0e0", "0.10e1"])
def test_strict_refuses_other_spellings(token: str) -> None:
    with pytest.raises(ValueError, match="canonical spelling"):
        canonical_json(f'{{"x":{token}}}', strict=True)


@pytest.mark.parametrize("text", ["[01]", "[1.]", "[.5]", "[1e]", "[1e1001]", "[NaN]",
                                  "[Infinity]", '{"a":1,"a":1}', '[{"b":[{"a":1,"a":2}]}]'])
def test_canonical_json_refuses_what_is_not_one_json_value(text: str) -> None:
    with pytest.raises(ValueError):
        canonical_json(text)


def test_exact_numbers_are_never_doubles() -> None:
    assert canonical_json("[12345678901234567]") != canonical_json("[12345678901234568]")
    assert canonical_json(f"[{10**40}]") == f"[{10**40}]"
    assert canonical_json("[5e-324]") == "[0." + "0" * 323 + "5]"
    # NUL in a string takes the pure encoder: the same text as the C path would give
    assert canonical_json('{"a":"\\u0000 1","b":1e1}') == '{"a":"\\u0000 1","b":10}'
    assert canonical_json('["\\u00001"]') == '["\\u00001"]'


def _vector_row(version: int, pii: str | None = None,
                new_values: Any = None) -> tuple[Any, ...]:
    record = AuditRecord(
        id="0192d6a0-0000-7000-8000-000000000001",
        timestamp=dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC), action="UPDATE",
        user_id="alice", resource_type="invoice", resource_id="42",
        new_values=new_values if new_values is not None else {
            "amount": 12345678901234567, "rate": 1e-7, "zero": -0.0, "big": 1e16},
        schema_version=version)
    record, texts = normalise(record)
    stored = canonical_stored_json if version >= EXACT_VERSION else v1_stored_json
    texts = {k: None if v is None else stored(v) for k, v in texts.items()}
    return chain_row(record, texts, "svc@host:1:abcd", 1, GENESIS_HASH, None, "00" * 16, pii)


def test_chain_hash_known_answers() -> None:
    """The vectors of docs/integrity.md: one record under each format, plain and keyed."""
    v2 = _vector_row(2)
    assert v2[3 + 14] == ('{"amount":12345678901234567,"big":10000000000000000,'
                          '"rate":0.0000001,"zero":0.0}')
    assert chain_hash(v2, None) == (
        "f9f5dd26f3b6468079118eba8499299f61e15ae224aa07d81874e8f14ff4ba26")
    assert chain_hash(v2, b"key") == (
        "a595d71c5bf5b7991ccec56993dac111a2f05672a0d5b50a2eb8dc9bdc8cb97a")
    v1 = _vector_row(1)  # format 1: large numbers as doubles, as sealed before
    assert v1[3 + 14] == '{"amount":1.2345678901234568e+16,"big":1e+16,"rate":1e-07,"zero":0.0}'
    assert chain_hash(v1, None) == (
        "52450359ffc5ed2570445be7e465d45d071aa2301f973778dfc4fe939dce73a0")
    assert chain_hash(v1, b"key") == (
        "91ef4ef8831df2de427df8db33bd520f35270ef80d0a0e556e8d27400c38d20a")


def test_personal_values_are_hashed_exactly() -> None:
    """Numbers under personal keys enter the digest exactly too (format 2)."""
    pii = '{"k": ["phone"]}'
    one = _vector_row(2, pii, {"phone": 12345678901234567, "n": 1})
    two = _vector_row(2, pii, {"phone": 12345678901234568, "n": 1})
    assert chain_hash(one, None) != chain_hash(two, None)
    assert chain_hash(one, None, canonicalise=False) == chain_hash(one, None)
    spelled = list(one)
    spelled[3 + 14] = '{"n":1,"phone":1.2345678901234567e16}'
    assert chain_hash(tuple(spelled), None) == INVALID
    # under format 1 both were the same double
    old_one = _vector_row(1, pii, {"phone": 12345678901234567, "n": 1})
    old_two = _vector_row(1, pii, {"phone": 12345678901234568, "n": 1})
    assert chain_hash(old_one, None) == chain_hash(old_two, None)


@given(json_values)
def test_canonical_json_ignores_formatting(value: Any) -> None:
    plain = json.dumps(value)
    spaced = json.dumps(value, indent=2, ensure_ascii=True, sort_keys=True)
    assert canonical_json(plain) == canonical_json(spaced)
    assert canonical_json(canonical_json(plain)) == canonical_json(plain)


@pytest.mark.postgres
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_canonical_json_is_stable_through_postgres_jsonb(pg_url: str, value: Any) -> None:
    engine = create_store_engine(pg_url)
    try:
        with engine.connect() as conn:
            rendered = conn.execute(text("SELECT CAST(CAST(:v AS JSONB) AS TEXT)"),
                                    {"v": json.dumps(value)}).scalar()
    finally:
        engine.dispose()
    assert canonical_json(str(rendered)) == canonical_json(json.dumps(value))
    # PostgreSQL prints every number in the canonical spelling: the verifier's strict
    # reading of what JSONB returns never refuses an honest value
    assert canonical_json(str(rendered), strict=True) == canonical_json(json.dumps(value))


def test_hash_payload_is_sha256_or_hmac() -> None:
    assert hash_payload(b"abc", None) == hashlib.sha256(b"abc").hexdigest()
    for key in (b"k", b"x" * 100):
        assert hash_payload(b"abc", key) == hmac.new(key, b"abc", hashlib.sha256).hexdigest()


def test_personal_digest_depends_on_salt_and_values() -> None:
    base = personal_digest("s1", ["u", None, "1.2.3.4", None], [])
    assert base != personal_digest("s2", ["u", None, "1.2.3.4", None], [])
    assert base != personal_digest("s1", ["v", None, "1.2.3.4", None], [])
    assert base != personal_digest("s1", ["u", None, "1.2.3.4", None], ["a@b"])
    texts = ['{"z":{"email":"a@b"},"email":"c@d","x":[{"phone":"1"}]}', None]
    # sorted keys, depth first: the order is part of the digest
    assert personal_json_values(texts, ["email", "phone"]) == ["c@d", "1", "a@b"]
    numbers = ['{"phone":12345678901234567}']
    assert personal_digest("s", [None] * 4, personal_json_values(numbers, ["phone"]),
                           version=1) != personal_digest(
        "s", [None] * 4, personal_json_values(numbers, ["phone"], version=2), version=2)


_exact_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**60), 10**60)
    | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_exact_values)
def test_what_the_sealer_stores_is_what_the_verifier_accepts(value: Any) -> None:
    """normalise() then the sealer's canonical_stored_json(): a text the strict reading
    accepts unchanged, with every number's exact value (ints exact, floats to the same
    double)."""
    _, texts = normalise(AuditRecord(id="x", timestamp=dt.datetime.now(dt.UTC), action="A",
                                     user_id="u", new_values=value))
    text = texts["new_values"]
    if text is None:
        return
    stored = canonical_stored_json(text)
    assert canonical_json(stored, strict=True) == stored
    assert canonical_json(text) == stored

    def same(read: Any, written: Any) -> bool:
        if isinstance(written, float):
            return isinstance(read, int | float) and float(read) == written
        if isinstance(written, list):
            return isinstance(read, list) and len(read) == len(written) and all(
                map(same, read, written))
        if isinstance(written, dict):
            return read.keys() == written.keys() and all(same(read[k], written[k])
                                                         for k in written)
        return type(read) is type(written) and read == written

    assert same(json.loads(stored), json.loads(text))
