"""Erasures are authenticated: forged, rewritten, restored or orphaned erasures are found.

Each attack keeps every hash valid (the chain covers personal values only through a
salted digest), so only the signed erasure documents can tell them apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from integrity_support import KEY, execute, verify, write_records
from sqlalchemy import Engine, text

from otel_audit import AuditTrail
from otel_audit.integrity.erasures import new_erasure, store_erasure
from otel_audit.integrity.keys import generate_signing_key, load_signing_key
from otel_audit.integrity.sources import chain_row_select
from otel_audit.retention import ERASED, _erasure, forget

Factory = Callable[..., AuditTrail]


@pytest.fixture
def erased(make_trail: Factory, engine: Engine,
           keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> AuditTrail:
    """20 records; user-0's (seqs 1, 5, 9, 13, 17) erased with a signed erasure."""
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 20)
    report = forget(engine, "user-0", erased_by="dpo", trail=trail, signing_key=keys[0])
    assert report.live == 5 and report.erasure_id
    return trail


def _found(engine: Engine, public: Ed25519PublicKey | None) -> list[tuple[str, int | None]]:
    return [(f.kind, f.seq) for f in verify(engine, public_key=public).findings]


def _chain_row(engine: Engine, seq: int) -> tuple[Any, ...]:
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    with engine.connect() as conn:
        row = conn.exec_driver_sql(f"SELECT {chain_row_select(engine.dialect.name)} FROM "
                                   f"audit_trails WHERE seq = {mark}", (seq,)).one()
    return tuple(row)


def _set(engine: Engine, seq: int, **values: Any) -> None:
    sets = ", ".join(f"{name} = :{name}" for name in values)
    execute(engine, f"UPDATE audit_trails SET {sets} WHERE seq = :seq", seq=seq, **values)


def test_real_erasure_verifies_with_the_public_key(
        erased: AuditTrail, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    report = verify(engine, public_key=keys[1])
    assert report.ok, report.findings
    assert (report.erased, report.erasures) == (5, 1)
    # without the public key the erasure cannot be authenticated: said, not passed
    found = verify(engine).findings
    assert [f.kind for f in found] == ["unauthenticated"]
    assert "public key" in found[0].detail


def test_fake_erasure_without_any_key_is_found(
        make_trail: Factory, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 6)
    # the attacker reads the salt, computes the digest, drops the salt and puts anyone
    # in the personal columns: every hash still verifies
    changes = _erasure(_chain_row(engine, 2))
    assert changes is not None
    _set(engine, 2, user_id="mallory", user_email=ERASED, client_ip=ERASED,
         user_agent=ERASED, pii_salt=None, pii=changes["pii"])
    changes = _erasure(_chain_row(engine, 3))
    assert changes is not None
    _set(engine, 3, user_id=ERASED, user_email=ERASED, client_ip=ERASED,
         user_agent=ERASED, pii_salt=None, pii=changes["pii"])
    found = _found(engine, keys[1])
    assert found == [("erasure", 2), ("erasure", 3)]  # and no "modified": the chain holds


def test_rewriting_an_erased_rows_personal_values_is_found(
        erased: AuditTrail, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    _set(engine, 5, user_id="someone-else")
    found = verify(engine, public_key=keys[1]).findings
    assert [(f.kind, f.seq) for f in found] == [("erasure", 5)]
    assert "user_id" in found[0].detail


def test_a_personal_json_value_written_back_is_found(
        erased: AuditTrail, engine: Engine, store_url: str,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    # seq 1 (i = 0) held {"email": ...} in old_values: erased, hashed as "$pii"
    doc = json.dumps({"email": "back@example.com", "name": "old-0"})
    cast = "CAST(:doc AS JSONB)" if store_url.startswith("postgresql") else ":doc"
    execute(engine, f"UPDATE audit_trails SET old_values = {cast} WHERE seq = 1", doc=doc)
    found = verify(engine, public_key=keys[1]).findings
    assert [(f.kind, f.seq) for f in found] == [("erasure", 1)]


def test_deleting_the_erasure_is_found(
        erased: AuditTrail, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    execute(engine, "DELETE FROM audit_erasures")
    found = _found(engine, keys[1])
    assert found == [("erasure", seq) for seq in (1, 5, 9, 13, 17)]


def test_deleting_the_erase_record_is_found(
        erased: AuditTrail, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    with engine.connect() as conn:
        record = conn.execute(text("SELECT id FROM audit_trails WHERE action = 'ERASE'")
                              ).scalar_one()
    execute(engine, "DELETE FROM audit_trails WHERE action = 'ERASE'")
    found = verify(engine, public_key=keys[1]).findings
    assert ("erasure", record) in {(f.kind, f.record_id) for f in found}


def test_restoring_an_erased_row_is_found(
        make_trail: Factory, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 6)
    with engine.connect() as conn:
        backup = conn.execute(text("SELECT user_id, user_email, client_ip, user_agent, "
                                   "pii_salt, pii FROM audit_trails WHERE seq = 2")).one()
    forget(engine, "user-1", signing_key=keys[0])
    assert verify(engine, public_key=keys[1]).ok
    _set(engine, 2, **dict(zip(("user_id", "user_email", "client_ip", "user_agent",
                                "pii_salt", "pii"), backup, strict=True)))
    found = verify(engine, public_key=keys[1]).findings
    assert [(f.kind, f.seq) for f in found] == [("erasure", 2)]
    assert "restored" in found[0].detail


def test_forged_erasure_documents_are_not_authentic(
        make_trail: Factory, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 6)
    changes = _erasure(_chain_row(engine, 2))
    assert changes is not None
    _set(engine, 2, user_id=ERASED, user_email=ERASED, client_ip=ERASED, user_agent=ERASED,
         pii_salt=None, pii=changes["pii"])
    row = _chain_row(engine, 2)
    entry = {"stream": row[0], "seq": 2, "id": row[3], "d": json.loads(changes["pii"])["d"],
             "fields": ["user_id", "user_email", "client_ip", "user_agent"], "k": []}
    with engine.begin() as conn:  # the attacker writes the erasure too, unsigned
        store_erasure(conn, new_erasure("f" * 32, [entry], erased_by="mallory",
                                        record_id=None, key=None))
    assert {f.kind for f in verify(engine, public_key=keys[1]).findings} == {"unauthenticated"}
    execute(engine, "DELETE FROM audit_erasures")
    other = load_signing_key(generate_signing_key()[0])
    with engine.begin() as conn:  # or signed with a key of their own
        store_erasure(conn, new_erasure("f" * 32, [entry], erased_by="mallory",
                                        record_id=None, key=other))
    assert {f.kind for f in verify(engine, public_key=keys[1]).findings} == {"bad_signature"}
