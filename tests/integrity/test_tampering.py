"""Each kind of tampering is detected and named, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from integrity_support import BASE, execute, kinds, verify
from sqlalchemy import Engine, text

from otel_audit import AuditTrail
from otel_audit.integrity.checkpoints import (
    create_checkpoints,
    export_checkpoints,
    latest_checkpoints,
    load_checkpoint_file,
)
from otel_audit.integrity.keys import generate_signing_key, load_public_key, load_signing_key


def _stream(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT stream FROM audit_trails LIMIT 1")).scalar())


def test_untouched_trail_verifies(chained: AuditTrail, engine: Engine) -> None:
    report = verify(engine)
    assert report.ok, report.findings
    assert report.records == 20
    assert report.streams == 1


def test_records_are_chained_in_order(chained: AuditTrail, engine: Engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT seq, prev_hash, hash FROM audit_trails ORDER BY seq")).all()
    assert [r[0] for r in rows] == list(range(1, 21))
    assert rows[0][1] == "0" * 64
    assert all(rows[i][1] == rows[i - 1][2] for i in range(1, 20))


def test_modified_value_is_detected(chained: AuditTrail, engine: Engine) -> None:
    execute(engine, "UPDATE audit_trails SET action = 'DELETE' WHERE seq = 7")
    report = verify(engine)
    assert [(f.kind, f.seq) for f in report.findings] == [("modified", 7)]


def test_modified_personal_value_is_detected(chained: AuditTrail, engine: Engine) -> None:
    execute(engine, "UPDATE audit_trails SET user_email = 'someone@else.org' WHERE seq = 3")
    assert [(f.kind, f.seq) for f in verify(engine).findings] == [("modified", 3)]


def test_modified_json_is_detected(chained: AuditTrail, engine: Engine, store_url: str) -> None:
    doc = json.dumps({"name": "forged"})
    cast = "CAST(:doc AS JSONB)" if store_url.startswith("postgresql") else ":doc"
    execute(engine, f"UPDATE audit_trails SET new_values = {cast} WHERE seq = 4", doc=doc)
    assert [(f.kind, f.seq) for f in verify(engine).findings] == [("modified", 4)]


def test_rehashed_record_without_the_key_is_detected(chained: AuditTrail, engine: Engine) -> None:
    # an attacker rewrites the content and the hash column, lacking the HMAC key
    execute(engine, "UPDATE audit_trails SET action = 'X', hash = :h WHERE seq = 5", h="ab" * 32)
    found = [(f.kind, f.seq) for f in verify(engine).findings]
    assert ("modified", 5) in found


def test_deleted_record_is_a_gap(chained: AuditTrail, engine: Engine) -> None:
    execute(engine, "DELETE FROM audit_trails WHERE seq IN (9, 10)")
    report = verify(engine)
    assert [(f.kind, f.seq) for f in report.findings] == [("deleted", 9)]
    assert "9..10" in report.findings[0].detail


def test_inserted_record_is_detected(chained: AuditTrail, engine: Engine) -> None:
    stream = _stream(engine)
    execute(engine, "INSERT INTO audit_trails (id, timestamp, action, user_id, requires_review, "
            "success, schema_version, stream, seq, prev_hash, hash) SELECT 'forged-1', "
            "timestamp, 'DELETE', 'mallory', requires_review, success, schema_version, stream, "
            "21, :prev, :h FROM audit_trails WHERE seq = 20", prev="cd" * 32, h="ef" * 32)
    execute(engine, "INSERT INTO audit_trails (id, timestamp, action, user_id, requires_review, "
            "success, schema_version) SELECT 'forged-2', timestamp, 'READ', 'mallory', "
            "requires_review, success, schema_version FROM audit_trails WHERE seq = 1")
    found = {(f.kind, f.record_id) for f in verify(engine).findings}
    assert found == {("inserted", "forged-1"), ("inserted", "forged-2")}
    assert stream


def test_reordered_records_are_detected(chained: AuditTrail, engine: Engine) -> None:
    # swap the positions of records 5 and 8 (three statements: seq is unique)
    execute(engine, "UPDATE audit_trails SET seq = -5 WHERE seq = 5")
    execute(engine, "UPDATE audit_trails SET seq = 5 WHERE seq = 8")
    execute(engine, "UPDATE audit_trails SET seq = 8 WHERE seq = -5")
    found = [(f.kind, f.seq) for f in verify(engine).findings]
    assert ("reordered", 5) in found
    assert ("reordered", 8) in found
    assert {k for k, _ in found} == {"reordered"}


def test_truncation_after_a_checkpoint_is_detected(chained: AuditTrail, engine: Engine,
                                                   tmp_path: Path) -> None:
    create_checkpoints(engine)
    export_checkpoints(latest_checkpoints(engine), tmp_path / "cp.json")
    execute(engine, "DELETE FROM audit_trails WHERE seq > 15")
    execute(engine, "DELETE FROM audit_checkpoints")  # the attacker cleans up in-database
    assert verify(engine).ok  # without the exported heads, a clean truncation is invisible
    report = verify(engine, checkpoints=load_checkpoint_file(tmp_path / "cp.json"))
    assert [(f.kind, f.seq) for f in report.findings] == [("truncated", 16)]


def test_rolled_back_database_is_detected(make_trail: object, chained: AuditTrail,
                                          engine: Engine, tmp_path: Path) -> None:
    create_checkpoints(engine)
    export_checkpoints(latest_checkpoints(engine), tmp_path / "cp.json")
    stream = _stream(engine)
    execute(engine, "DELETE FROM audit_checkpoints")
    execute(engine, "DELETE FROM audit_trails WHERE stream = :s", s=stream)
    report = verify(engine, checkpoints=load_checkpoint_file(tmp_path / "cp.json"))
    assert kinds(report) == {"truncated"}


def test_rebuilt_chain_differs_from_checkpoint(chained: AuditTrail, engine: Engine) -> None:
    from otel_audit.integrity.canonical import chain_hash, row_mac, stored_hash
    from otel_audit.integrity.sources import StoreSource
    from otel_audit.store.schema import ROW_COLUMNS

    create_checkpoints(engine)
    # a format-3 chain is plain SHA-256 (its MACs apart): rebuild it from a modified
    # record on, with the MACs too (the attacker stole the key)
    source = StoreSource(engine)
    execute(engine, "UPDATE audit_trails SET action = 'FORGED' WHERE seq = 18")
    rows = [source.chain_row(r) for r in source.rows()]
    prev = stored_hash(rows[16])
    at_hash, at_mac = ROW_COLUMNS.index("hash"), ROW_COLUMNS.index("mac")
    for row in rows[17:]:
        fixed = (row[0], row[1], prev, *row[3:at_hash], None, *row[at_hash + 1:at_mac], None)
        new = chain_hash(fixed, None)
        execute(engine, "UPDATE audit_trails SET prev_hash = :p, hash = :h, mac = :m "
                "WHERE seq = :s", p=prev, h=new, m=row_mac(new, b"test-chain-key"), s=row[1])
        prev = new
    report = verify(engine)
    assert [(f.kind, f.seq) for f in report.findings] == [("modified", 20)]
    assert "checkpoint" in report.findings[0].detail


def test_signed_checkpoints(chained: AuditTrail, engine: Engine) -> None:
    pem, public = generate_signing_key()
    made = create_checkpoints(engine, load_signing_key(pem))
    assert made and all(cp.signature for cp in made)
    key = load_public_key(public)
    assert verify(engine, public_key=key).ok
    execute(engine, "UPDATE audit_checkpoints SET seq = seq - 1")
    found = [(f.kind, f.seq) for f in verify(engine, public_key=key).findings]
    assert ("bad_signature", 19) in found
    other = load_public_key(generate_signing_key()[1])
    execute(engine, "UPDATE audit_checkpoints SET seq = seq + 1")
    assert kinds(verify(engine, public_key=other)) == {"bad_signature"}


def test_wrong_key_reports_every_record(chained: AuditTrail, engine: Engine) -> None:
    # a format-3 chain verifies without the key; each record's mac does not with another
    report = verify(engine, key=b"another key")
    assert len(report.findings) == 20
    assert kinds(report) == {"modified"}


def test_since_limits_the_walk(chained: AuditTrail, engine: Engine) -> None:
    execute(engine, "UPDATE audit_trails SET action = 'X' WHERE seq = 2")
    import datetime as dt

    report = verify(engine, since=BASE + dt.timedelta(seconds=10))
    assert report.ok
    assert report.records == 10
    stream = _stream(engine)
    assert verify(engine, stream=stream).findings[0].seq == 2
    assert verify(engine, stream="no-such-stream").records == 0


def test_unsigned_checkpoints_are_unsigned_not_bad(chained: AuditTrail, engine: Engine) -> None:
    create_checkpoints(engine)  # no signing key
    key = load_public_key(generate_signing_key()[1])
    report = verify(engine, public_key=key)
    assert report.ok
    assert [(w.kind, w.seq) for w in report.warnings] == [("unsigned", 20)]
    strict = verify(engine, public_key=key, require_signed=True)
    assert [(f.kind, f.seq) for f in strict.findings] == [("unsigned", 20)]
    assert "not signed" in strict.findings[0].detail


def test_exported_checkpoint_conflicting_with_the_database_is_found(
        chained: AuditTrail, engine: Engine, tmp_path: Path) -> None:
    create_checkpoints(engine)
    export_checkpoints(latest_checkpoints(engine), tmp_path / "cp.json")
    doc = json.loads((tmp_path / "cp.json").read_text())
    doc["checkpoints"][0]["hash"] = "ab" * 32  # the same (stream, seq), another head
    (tmp_path / "cp.json").write_text(json.dumps(doc))
    report = verify(engine, checkpoints=load_checkpoint_file(tmp_path / "cp.json"))
    assert [(f.kind, f.seq) for f in report.findings] == [("conflict", 20)]


def test_null_seq_is_a_finding_not_a_traceback(chained: AuditTrail, engine: Engine) -> None:
    execute(engine, "UPDATE audit_trails SET seq = NULL WHERE seq = 6")
    found = {(f.kind, f.seq) for f in verify(engine).findings}
    assert found == {("inserted", None), ("deleted", 6)}


def test_sqlite_text_seq_and_blob_values_are_findings(chained: AuditTrail, engine: Engine,
                                                      store_url: str) -> None:
    if not store_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's typed columns refuse a text seq or a binary value")
    execute(engine, "UPDATE audit_trails SET seq = 'six' WHERE seq = 6")
    execute(engine, "UPDATE audit_trails SET action = X'00ff' WHERE seq = 9")
    execute(engine, "UPDATE audit_trails SET user_agent = X'00' WHERE seq = 12")
    report = verify(engine)
    found = [(f.kind, f.seq, f.detail) for f in report.findings]
    assert ("malformed", None, "seq is not an integer (text)") in found
    assert ("malformed", 9, "binary value in action") in found
    assert ("malformed", 12, "binary value in user_agent") in found
    assert {(k, s) for k, s, _ in found} == {("malformed", None), ("malformed", 9),
                                            ("malformed", 12), ("deleted", 6),
                                            ("deleted", 9), ("deleted", 12)}
