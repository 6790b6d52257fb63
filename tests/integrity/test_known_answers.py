"""Known-answer vectors: fixed rows give fixed SHA-256 and HMAC-SHA256 hashes under each
hash format, whichever implementation computes them (docs/integrity.md lists them).

The pure-Python sealer (record by record and column by column), the compiled
``seal_plain`` (where it is built and not switched off) and the verifier's
:func:`chain_hash` must all give these exact values: the format is the specification,
not whatever encoder happened to run.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from otel_audit import _accel
from otel_audit.integrity.canonical import (
    EXACT_VERSION,
    GENESIS_HASH,
    canonical_stored_json,
    chain_hash,
)
from otel_audit.integrity.canonical_json import v1_stored_json
from otel_audit.integrity.chain import ChainSealer
from otel_audit.record import AuditRecord, normalise
from otel_audit.store.writer import PreparedRecord, chain_row

STREAM = "svc@host:1:abcd"
SALT = "00" * 16
KEY = b"key"


def _record(version: int, new_values: Any, *, email: str | None = None,
            record_id: str = "0192d6a0-0000-7000-8000-000000000002") -> AuditRecord:
    return AuditRecord(
        id=record_id, timestamp=dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        action="UPDATE", user_id="alice", user_email=email, resource_type="invoice",
        resource_id="42", new_values=new_values, schema_version=version)


#: (record, personal JSON keys, SHA-256, HMAC-SHA256 with key ``key``), format 2.
#: The first is "plain" (the column-wise and compiled sealers take it); the second has a
#: personal JSON key and a float (the record-by-record path with canonical texts).
SEALED_VECTORS = [
    pytest.param(
        _record(2, {"amount": 12345678901234567, "name": 'Zoë \u2028 "q"', "ok": True,
                    "tags": ["a", None]}, email="alice@example.com"),
        "1b5239b7eacd4bc998b053e9274da8f2c531953d72cc2fb028c2c4eedd9e1c3c",
        "251c5a14464ebab4bb13ef0d005fd19e37d097abce4ac37ed0ead79ed9732f5c",
        True, id="plain"),
    pytest.param(
        _record(2, {"phone": "+44 20 7946 0000", "n": 1.5}),
        "58f3a10602621f20c548926751f5ab40e239ce6c85b846838792fcf5da0d7b06",
        "bb72591681369782a5e476edd81cab33f824037e782469e2497a29ed5e930f5c",
        False, id="personal-key"),
]


def _sealer(key: bytes | None) -> ChainSealer:
    sealer = ChainSealer(service_name="s", stream=STREAM, hmac_key=key,
                         personal_keys=["phone"])
    sealer._resumed = True  # a fresh chain: seq 1 after the genesis hash
    return sealer


@pytest.mark.parametrize(("record", "sha", "hmac_hash", "plain"), SEALED_VECTORS)
def test_every_sealer_and_the_verifier_give_the_known_answers(
        record: AuditRecord, sha: str, hmac_hash: str, plain: bool) -> None:
    for key, expected in ((None, sha), (KEY, hmac_hash)):
        prepared = PreparedRecord(*normalise(record))
        by_record = _sealer(key)._seal(prepared, SALT)
        assert by_record.hash == expected
        assert by_record.row is not None
        assert chain_hash(by_record.row, key) == expected  # the verifier, canonicalising
        assert chain_hash(by_record.row, key, canonicalise=False) == expected
        sealer = _sealer(key)
        assert sealer._plain([prepared]) is plain
        if not plain:
            continue
        columns = sealer._seal_columns([prepared], SALT, compiled=False)
        assert [p.hash for p in columns] == [expected]
        assert columns == [by_record]


@pytest.mark.skipif(_accel.speedups is None, reason="compiled module not built or switched off")
@pytest.mark.parametrize(("record", "sha", "hmac_hash", "plain"), SEALED_VECTORS[:1])
def test_the_compiled_sealer_gives_the_known_answers(
        record: AuditRecord, sha: str, hmac_hash: str, plain: bool) -> None:
    for key, expected in ((None, sha), (KEY, hmac_hash)):
        prepared = PreparedRecord(*normalise(record))
        sealed = _sealer(key)._seal_columns([prepared], SALT, compiled=True)
        assert [p.hash for p in sealed] == [expected]
        assert sealed == [_sealer(key)._seal(prepared, SALT)]


def _verifier_row(version: int) -> tuple[Any, ...]:
    record = _record(version, {"amount": 12345678901234567, "rate": 1e-7, "zero": -0.0,
                               "big": 1e16}, record_id="0192d6a0-0000-7000-8000-000000000001")
    record, texts = normalise(record)
    stored = canonical_stored_json if version >= EXACT_VERSION else v1_stored_json
    texts = {k: None if v is None else stored(v) for k, v in texts.items()}
    return chain_row(record, texts, STREAM, 1, GENESIS_HASH, None, SALT, None)


@pytest.mark.parametrize(("version", "sha", "hmac_hash"), [
    (2, "f9f5dd26f3b6468079118eba8499299f61e15ae224aa07d81874e8f14ff4ba26",
     "a595d71c5bf5b7991ccec56993dac111a2f05672a0d5b50a2eb8dc9bdc8cb97a"),
    (1, "52450359ffc5ed2570445be7e465d45d071aa2301f973778dfc4fe939dce73a0",
     "91ef4ef8831df2de427df8db33bd520f35270ef80d0a0e556e8d27400c38d20a"),
])
def test_the_verifier_gives_the_known_answers_under_each_format(
        version: int, sha: str, hmac_hash: str) -> None:
    row = _verifier_row(version)
    assert chain_hash(row, None) == sha
    assert chain_hash(row, KEY) == hmac_hash
    if version >= EXACT_VERSION:  # what the sealer writes for the same record
        sealed = _sealer(KEY)._seal(PreparedRecord(*normalise(_record(
            2, {"amount": 12345678901234567, "rate": 1e-7, "zero": -0.0, "big": 1e16},
            record_id="0192d6a0-0000-7000-8000-000000000001"))), SALT)
        assert sealed.hash == hmac_hash
