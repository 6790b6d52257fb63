"""Public verifiability (``otel-audit/3``): a keyed trail verifies with public keys only,
the HMAC key adds the check of each record's ``mac``. Attacks on both stores, as an
insider with write access to the database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from integrity_support import KEY, execute, kinds, verify, write_records
from sqlalchemy import Engine, text

from otel_audit import AuditTrail
from otel_audit.integrity.canonical import chain_hash, row_mac, stored_hash
from otel_audit.integrity.keys import generate_signing_key, load_public_key
from otel_audit.integrity.sources import StoreSource
from otel_audit.store.schema import ROW_COLUMNS

_HASH, _MAC = ROW_COLUMNS.index("hash"), ROW_COLUMNS.index("mac")


@pytest.fixture
def signed(make_trail: Callable[..., AuditTrail]) -> tuple[AuditTrail, Any]:
    """A keyed trail whose seals are signed: 12 records, sealed at shutdown."""
    pem, public = generate_signing_key()
    trail = make_trail(mode="sync", hmac_key=KEY, signing_key=pem)
    write_records(trail, 12)
    trail.shutdown()
    return trail, load_public_key(public)


def _rebuild_from(engine: Engine, seq: int, key: bytes | None) -> None:
    """Rewrite record ``seq`` and recompute every SHA-256 hash after it (and, with the
    stolen ``key``, every mac), as an insider can: the chain links again."""
    execute(engine, "UPDATE audit_trails SET action = 'FORGED' WHERE seq = :s", s=seq)
    source = StoreSource(engine)
    rows = [source.chain_row(r) for r in source.rows()]
    prev = stored_hash(rows[seq - 2])
    for row in rows[seq - 1:]:
        fixed = (row[0], row[1], prev, *row[3:_HASH], None, *row[_HASH + 1:_MAC], None)
        new = chain_hash(fixed, None)
        mac = row[_MAC] if key is None else row_mac(new, key)
        execute(engine, "UPDATE audit_trails SET prev_hash = :p, hash = :h, mac = :m "
                "WHERE seq = :s", p=prev, h=new, m=mac, s=row[1])
        prev = new


def test_a_clean_keyed_store_verifies_without_the_key(
        signed: tuple[AuditTrail, Any], engine: Engine) -> None:
    _, public = signed
    report = verify(engine, key=None, public_key=public, require_signed=True)
    assert report.ok, report.findings
    assert report.records == 12 and report.macs_unchecked == 12
    assert report.to_dict()["macs_unchecked"] == 12
    keyed = verify(engine, public_key=public)
    assert keyed.ok and keyed.macs_unchecked == 0


def test_a_chain_rebuilt_without_keys_is_found_by_the_signed_seal(
        signed: tuple[AuditTrail, Any], engine: Engine) -> None:
    _, public = signed
    _rebuild_from(engine, 5, None)
    # no HMAC key: every link holds, the newest record differs from what the signed seal
    # named (the store holds no checkpoint: a sealed head counts as one)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM audit_checkpoints")).scalar() == 0
    report = verify(engine, key=None, public_key=public, require_signed=True)
    assert [(f.kind, f.seq) for f in report.findings] == [("modified", 12)]
    assert "differs from the checkpoint" in report.findings[0].detail
    # the HMAC key finds each rewritten record as well: its mac is not its hash's
    keyed = verify(engine, public_key=public)
    assert ("modified", 5) in [(f.kind, f.seq) for f in keyed.findings]
    assert {f.seq for f in keyed.findings if f.kind == "modified"} == set(range(5, 13))


def test_a_chain_rebuilt_with_the_stolen_key_is_found_by_the_signed_seal(
        signed: tuple[AuditTrail, Any], engine: Engine) -> None:
    _, public = signed
    _rebuild_from(engine, 7, KEY.encode())
    for key in (None, KEY.encode()):
        report = verify(engine, key=key, public_key=public, require_signed=True)
        assert [(f.kind, f.seq) for f in report.findings] == [("modified", 12)]


@pytest.mark.parametrize("mac", ["0" * 64, None, "forged"])
def test_a_forged_or_missing_mac_is_found_with_the_key(
        signed: tuple[AuditTrail, Any], engine: Engine, mac: str | None) -> None:
    execute(engine, "UPDATE audit_trails SET mac = :m WHERE seq = 4", m=mac)
    report = verify(engine)
    assert [(f.kind, f.seq) for f in report.findings] == [("modified", 4)]
    # without the key the record's public hash still holds (the mac is not checked)
    assert verify(engine, key=None).ok


def test_macs_dropped_everywhere_are_found_with_the_key(
        signed: tuple[AuditTrail, Any], engine: Engine) -> None:
    execute(engine, "UPDATE audit_trails SET mac = NULL")
    report = verify(engine)
    assert kinds(report) == {"modified"} and len(report.findings) == 12
    unkeyed = verify(engine, key=None)
    assert unkeyed.ok and unkeyed.macs_unchecked == 0


def test_a_mac_from_another_record_is_found(
        signed: tuple[AuditTrail, Any], engine: Engine) -> None:
    with engine.connect() as conn:
        other = conn.execute(text("SELECT mac FROM audit_trails WHERE seq = 2")).scalar()
    execute(engine, "UPDATE audit_trails SET mac = :m WHERE seq = 3", m=other)
    assert [(f.kind, f.seq) for f in verify(engine).findings] == [("modified", 3)]


def test_an_unkeyed_trail_has_no_macs(make_trail: Callable[..., AuditTrail],
                                      engine: Engine) -> None:
    trail = make_trail(mode="sync")
    write_records(trail, 3)
    trail.shutdown()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM audit_trails WHERE mac IS NOT NULL")
                            ).scalar() == 0
    report = verify(engine, key=None)
    assert report.ok and report.macs_unchecked == 0
    # a verifier holding a key the trail never had: every record lacks its mac
    assert len(verify(engine).findings) == 3


def test_the_cli_says_once_that_the_macs_were_not_checked(
        signed: tuple[AuditTrail, Any], store_url: str) -> None:
    from typer.testing import CliRunner

    from otel_audit.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["verify", "--db", store_url])  # no OTEL_AUDIT_HMAC_KEY
    assert result.exit_code == 0, result.stdout
    assert result.stdout.count("12 MACs not checked") == 1
    result = runner.invoke(app, ["verify", "--db", store_url, "--format", "json"])
    assert result.exit_code == 0 and '"macs_unchecked": 12' in result.stdout
    keyed = runner.invoke(app, ["verify", "--db", store_url], env={"OTEL_AUDIT_HMAC_KEY": KEY})
    assert keyed.exit_code == 0 and "MACs not checked" not in keyed.stdout


def test_workers_find_the_same_macs(signed: tuple[AuditTrail, Any], engine: Engine) -> None:
    execute(engine, "UPDATE audit_trails SET mac = NULL WHERE seq IN (3, 9)")
    one = verify(engine)
    assert [(f.kind, f.seq) for f in one.findings] == [("modified", 3), ("modified", 9)]
    parallel = verify(engine, workers=2)
    assert [(f.kind, f.seq, f.detail) for f in parallel.findings] == [
        (f.kind, f.seq, f.detail) for f in one.findings]
    assert verify(engine, key=None, workers=2).macs_unchecked == 10
