"""Known-answer vectors: fixed rows give fixed SHA-256 and HMAC-SHA256 hashes under each
hash format, whichever implementation computes them (docs/integrity.md lists them).

The pure-Python sealer (record by record and column by column), the compiled
``seal_plain`` (where it is built and not switched off) and the verifier's
:func:`chain_hash` must all give these exact values: the format is the specification,
not whatever encoder happened to run. Every record is sealed under ``otel-audit/3``
(a public SHA-256 hash, and with a key the ``mac`` over it); rows sealed by earlier
releases under ``otel-audit/2`` and ``/1`` keep their vectors on the verifier's side.
A spelled-out builder of the format-3 payload (straight from docs/integrity.md, with
the standard library only) checks the format-3 vectors once more.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import pytest

from otel_audit import _accel
from otel_audit.integrity.canonical import (
    EXACT_VERSION,
    GENESIS_HASH,
    PUBLIC_FORMAT,
    canonical_stored_json,
    chain_hash,
    row_mac,
    stored_mac,
)
from otel_audit.integrity.canonical_json import v1_stored_json
from otel_audit.integrity.chain import ChainSealer
from otel_audit.record import AuditRecord, normalise
from otel_audit.store.writer import PreparedRecord, chain_row

STREAM = "svc@host:1:abcd"
SALT = "00" * 16
KEY = b"key"


def _record(version: int, new_values: Any, *, email: str | None = None,
            record_id: str = "0192d6a0-0000-7000-8000-000000000002",
            **layout3: Any) -> AuditRecord:
    return AuditRecord(
        id=record_id, timestamp=dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        action="UPDATE", user_id="alice", user_email=email, resource_type="invoice",
        resource_id="42", new_values=new_values, schema_version=version, **layout3)


#: a delegated action: bob's service account acting for alice through token exchange
DELEGATED = {"acting_as": "alice", "auth_method": "oauth2-token-exchange",
             "delegation_chain": [{"principal": "alice", "via": "session"},
                                  {"principal": "svc-reports", "via": "token-exchange"}]}

#: (record, SHA-256 = the hash with or without a key, HMAC-SHA256 of the hash with key
#: ``key`` = the mac, plain), format 3. The first is "plain" (the column-wise and
#: compiled sealers take it); the second has a personal JSON key and a float (the
#: record-by-record path with canonical texts); the third is a delegated action.
SEALED_VECTORS = [
    pytest.param(
        _record(3, {"amount": 12345678901234567, "name": 'Zoë \u2028 "q"', "ok": True,
                    "tags": ["a", None]}, email="alice@example.com"),
        "4d6e58d930c6b2d90c963a7642c5679db1a4e3c1fbb69097af1759c0aac42e0b",
        "51a0697a9afe3be78c473b46a827de5ed58729a192c2e1c42d13252a3b2e8777",
        True, id="plain"),
    pytest.param(
        _record(3, {"phone": "+44 20 7946 0000", "n": 1.5}),
        "1e181be7896cd2898637e95ffa164540c29e91d08f7d114283567857dc7af50b",
        "6fca99aecd17f475baf89502fdb61ce03df3bfa66d2a8a12bd8709b2ad69f72d",
        False, id="personal-key"),
    pytest.param(
        _record(3, {"report": "q3"}, record_id="0192d6a0-0000-7000-8000-000000000003",
                **DELEGATED),
        "4dd7fd37f3cafe906c964a1c25221193567e39cbd82c1362dd51316bff12b4bc",
        "08a930c76274439d8a73d2d735a779db7bfcae45408256186ebe38f00b49c129",
        True, id="delegated"),
]

#: (record, SHA-256, HMAC-SHA256 with key ``key``): rows a release before layout 3
#: sealed under format 2 (its sealer's vectors), which keep verifying.
FORMAT2_VECTORS = [
    pytest.param(
        _record(2, {"amount": 12345678901234567, "name": 'Zoë \u2028 "q"', "ok": True,
                    "tags": ["a", None]}, email="alice@example.com"),
        "1b5239b7eacd4bc998b053e9274da8f2c531953d72cc2fb028c2c4eedd9e1c3c",
        "251c5a14464ebab4bb13ef0d005fd19e37d097abce4ac37ed0ead79ed9732f5c",
        None, id="plain"),
    pytest.param(
        _record(2, {"phone": "+44 20 7946 0000", "n": 1.5}),
        "58f3a10602621f20c548926751f5ab40e239ce6c85b846838792fcf5da0d7b06",
        "bb72591681369782a5e476edd81cab33f824037e782469e2497a29ed5e930f5c",
        '{"k": ["phone"]}', id="personal-key"),
]


def _sealer(key: bytes | None) -> ChainSealer:
    sealer = ChainSealer(service_name="s", stream=STREAM, hmac_key=key,
                         personal_keys=["phone"])
    sealer._resumed = True  # a fresh chain: seq 1 after the genesis hash
    return sealer


@pytest.mark.parametrize(("record", "sha", "mac", "plain"), SEALED_VECTORS)
def test_every_sealer_and_the_verifier_give_the_known_answers(
        record: AuditRecord, sha: str, mac: str, plain: bool) -> None:
    for key, expected_mac in ((None, None), (KEY, mac)):
        prepared = PreparedRecord(*normalise(record))
        by_record = _sealer(key)._seal(prepared, SALT)
        assert by_record.hash == sha  # public: the same with or without the key
        assert by_record.mac == expected_mac
        assert by_record.row is not None
        assert stored_mac(by_record.row) == expected_mac
        for verifier_key in (None, KEY):  # the key plays no part in a format-3 hash
            assert chain_hash(by_record.row, verifier_key) == sha
            assert chain_hash(by_record.row, verifier_key, canonicalise=False) == sha
        assert row_mac(sha, KEY) == mac
        assert _spelled_out_hash(by_record.row) == sha
        sealer = _sealer(key)
        assert sealer._plain([prepared]) is plain
        if not plain:
            continue
        columns = sealer._seal_columns([prepared], SALT, compiled=False)
        assert [(p.hash, p.mac) for p in columns] == [(sha, expected_mac)]
        assert columns == [by_record]


@pytest.mark.skipif(_accel.speedups is None, reason="compiled module not built or switched off")
@pytest.mark.parametrize(("record", "sha", "mac", "plain"),
                         [v for v in SEALED_VECTORS if v.values[3]])
def test_the_compiled_sealer_gives_the_known_answers(
        record: AuditRecord, sha: str, mac: str, plain: bool) -> None:
    for key, expected_mac in ((None, None), (KEY, mac)):
        prepared = PreparedRecord(*normalise(record))
        sealed = _sealer(key)._seal_columns([prepared], SALT, compiled=True)
        assert [(p.hash, p.mac) for p in sealed] == [(sha, expected_mac)]
        assert sealed == [_sealer(key)._seal(prepared, SALT)]


@pytest.mark.parametrize(("record", "sha", "hmac_hash", "pii"), FORMAT2_VECTORS)
def test_rows_sealed_under_format_2_keep_their_known_answers(
        record: AuditRecord, sha: str, hmac_hash: str, pii: str | None) -> None:
    # the row as a release before layout 3 stored it: canonical texts, no new fields
    record, texts = normalise(record)
    texts = {k: None if v is None else canonical_stored_json(v) for k, v in texts.items()}
    row = chain_row(record, texts, STREAM, 1, GENESIS_HASH, None, SALT, pii)
    assert chain_hash(row, None) == sha
    assert chain_hash(row, KEY) == hmac_hash


def _spelled_out_hash(row: tuple[Any, ...]) -> str:
    """SHA-256 of the format-3 payload of a row without personal JSON keys, built as
    docs/integrity.md spells it out (json module only; canonical texts as stored)."""
    from otel_audit.store.schema import ROW_COLUMNS

    f = dict(zip(ROW_COLUMNS, row, strict=True))
    dumps = lambda value: json.dumps(  # noqa: E731
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    keys = json.loads(f["pii"])["k"] if f["pii"] else None
    if keys:  # the masked texts: the sealer's own, checked by the other assertions
        return str(chain_hash(row, None))
    personal = [f["user_id"], f["user_email"], f["client_ip"], f["user_agent"],
                f["acting_as"], f["delegation_chain"], []]
    digest = hashlib.sha256(f"{f['pii_salt']}\x00{dumps(personal)}".encode()).hexdigest()
    payload = [PUBLIC_FORMAT, f["stream"], f["seq"], f["prev_hash"], f["id"],
               f["timestamp"], f["correlation_id"], f["request_id"], f["trace_id"],
               f["span_id"], f["action"], f["resource_type"], f["resource_id"],
               f["resource_name"], f["team_id"], f["request_path"], f["request_method"],
               f["old_values"], f["new_values"], f["changes"], f["data_classification"],
               f["requires_review"], f["success"], f["error_message"], f["context"],
               f["service_name"], f["schema_version"], f["auth_method"], keys, digest]
    return hashlib.sha256(dumps(payload).encode()).hexdigest()


def test_the_mac_is_the_hmac_of_the_hash() -> None:
    digest = "ab" * 32
    assert row_mac(digest, KEY) == hmac.new(KEY, digest.encode(), hashlib.sha256).hexdigest()


def _verifier_row(version: int) -> tuple[Any, ...]:
    record = _record(version, {"amount": 12345678901234567, "rate": 1e-7, "zero": -0.0,
                               "big": 1e16}, record_id="0192d6a0-0000-7000-8000-000000000001")
    record, texts = normalise(record)
    stored = canonical_stored_json if version >= EXACT_VERSION else v1_stored_json
    texts = {k: None if v is None else stored(v) for k, v in texts.items()}
    return chain_row(record, texts, STREAM, 1, GENESIS_HASH, None, SALT, None)


@pytest.mark.parametrize(("version", "sha", "hmac_hash"), [
    (3, "ece2618202404348330fb5a72e54d1a7a45839cdc5eedc9792b4ed0c96bec09a",
     "ece2618202404348330fb5a72e54d1a7a45839cdc5eedc9792b4ed0c96bec09a"),
    (2, "f9f5dd26f3b6468079118eba8499299f61e15ae224aa07d81874e8f14ff4ba26",
     "a595d71c5bf5b7991ccec56993dac111a2f05672a0d5b50a2eb8dc9bdc8cb97a"),
    (1, "52450359ffc5ed2570445be7e465d45d071aa2301f973778dfc4fe939dce73a0",
     "91ef4ef8831df2de427df8db33bd520f35270ef80d0a0e556e8d27400c38d20a"),
])
def test_the_verifier_gives_the_known_answers_under_each_format(
        version: int, sha: str, hmac_hash: str) -> None:
    row = _verifier_row(version)
    assert chain_hash(row, None) == sha
    assert chain_hash(row, KEY) == hmac_hash  # format 3: the key plays no part
    if version == 3:  # what the sealer writes for the same record
        sealed = _sealer(KEY)._seal(PreparedRecord(*normalise(_record(
            3, {"amount": 12345678901234567, "rate": 1e-7, "zero": -0.0, "big": 1e16},
            record_id="0192d6a0-0000-7000-8000-000000000001"))), SALT)
        assert sealed.hash == sha
        assert sealed.row is not None and _spelled_out_hash(sealed.row) == sha
