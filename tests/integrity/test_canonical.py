"""The canonical serialisation: stable across stores, keyed hashing, personal digests."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from otel_audit.integrity.canonical import (
    canonical_json,
    hash_payload,
    personal_digest,
    personal_json_values,
)
from otel_audit.store.writer import create_store_engine

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
