"""Prune to Parquet, verify across the boundary, legal holds, erasure that keeps the proof."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from integrity_support import BASE, KEY, execute, kinds, verify, write_records
from sqlalchemy import Engine, func, select, text

from otel_audit import AuditTrail
from otel_audit.integrity.keys import generate_signing_key, load_public_key, load_signing_key
from otel_audit.retention import (
    ERASED,
    active_holds,
    add_hold,
    forget,
    load_manifest,
    prune,
    release_hold,
)
from otel_audit.store.schema import audit_trails

Factory = Callable[..., AuditTrail]
CUTOFF = BASE + dt.timedelta(days=3)


@pytest.fixture
def daily(make_trail: Factory) -> AuditTrail:
    """30 records spread over 6 days (one every 0.2 day)."""
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 30, day_step=0.2)
    return trail


def _live(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(audit_trails)) or 0)


def test_prune_archives_by_day_and_verify_continues(daily: AuditTrail, engine: Engine,
                                                    tmp_path: Path) -> None:
    report = prune(engine, CUTOFF, tmp_path)
    assert report.archived == report.deleted == 15
    assert _live(engine) == 15
    days = sorted(p.parent.name for p in tmp_path.rglob("*.parquet"))
    assert days == ["day=2026-01-01", "day=2026-01-02", "day=2026-01-03"]
    manifest = load_manifest(tmp_path)
    (run,) = manifest["runs"]
    (stream,) = run["streams"].values()
    assert (stream["count"], stream["first_seq"], stream["last_seq"]) == (15, 1, 15)
    assert sum(f["rows"] for f in run["files"]) == 15
    # live rows alone start at seq 16: verify says so unless given the archive
    assert kinds(verify(engine)) == {"deleted"}
    full = verify(engine, archive_dir=tmp_path)
    assert full.ok, full.findings
    assert full.records == 30
    assert full.archive_files == 3


def test_archive_columns_and_types(daily: AuditTrail, engine: Engine, tmp_path: Path) -> None:
    prune(engine, CUTOFF, tmp_path)
    con = duckdb.connect()
    described = con.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{tmp_path}/**/*.parquet', "
        "hive_partitioning = false)").fetchall()
    types = {name: kind for name, kind, *_ in described}
    assert list(types) == list(audit_trails.c.keys())
    assert types["timestamp"] == "TIMESTAMP WITH TIME ZONE"
    assert types["success"] == types["requires_review"] == "BOOLEAN"
    assert types["new_values"] == "JSON"
    assert types["seq"] == "BIGINT"


def test_analytics_reads_archives_and_live_rows_as_one(daily: AuditTrail, engine: Engine,
                                                       store_url: str, tmp_path: Path) -> None:
    analytics = pytest.importorskip("otel_audit.analytics")
    prune(engine, CUTOFF, tmp_path)
    with analytics.AuditAnalytics(store_url, archive_dir=tmp_path) as a:
        rows = a.sql("SELECT count(*), count(DISTINCT seq), min(seq), max(seq) "
                     "FROM audit_trails").fetchall()
    assert rows == [(30, 30, 1, 30)]


def test_tampered_archive_is_detected(daily: AuditTrail, engine: Engine, tmp_path: Path) -> None:
    prune(engine, CUTOFF, tmp_path)
    first = sorted(tmp_path.rglob("*.parquet"))[0]
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * REPLACE ('FORGED' AS action) FROM read_parquet('{first}')) "
                f"TO '{first}.new' (FORMAT parquet)")
    Path(f"{first}.new").replace(first)
    report = verify(engine, archive_dir=tmp_path)
    assert {"archive", "modified"} <= kinds(report)
    first.unlink()
    assert "deleted" in kinds(verify(engine, archive_dir=tmp_path))


def test_held_records_are_never_pruned(daily: AuditTrail, engine: Engine, tmp_path: Path) -> None:
    hold = add_hold(engine, "user", "user-1", reason="case 42", created_by="legal",
                    trail=daily)
    add_hold(engine, "resource", "tool-2", resource_type="tool", trail=daily)
    assert next(h.id for h in active_holds(engine)) == hold.id
    report = prune(engine, CUTOFF, tmp_path)
    held_live = 4 + 1  # user-1 (seqs 2, 6, 10, 14) and tool-2 before the cutoff
    assert report.held == held_live
    with engine.connect() as conn:
        users = set(conn.execute(text(
            "SELECT user_id FROM audit_trails WHERE timestamp < :c"), {"c": CUTOFF}).scalars())
    assert users <= {"user-1", "user-2"}
    with engine.connect() as conn:
        actions = list(conn.execute(text(
            "SELECT action FROM audit_trails WHERE resource_type = 'audit_hold'")).scalars())
    assert actions == ["LEGAL_HOLD_ADD", "LEGAL_HOLD_ADD"]  # holds are audited
    assert verify(engine, archive_dir=tmp_path).ok
    assert release_hold(engine, hold.id, trail=daily)
    assert not release_hold(engine, hold.id)
    prune(engine, CUTOFF, tmp_path)
    assert verify(engine, archive_dir=tmp_path).ok


def test_forget_erases_live_and_archived_values_and_verify_passes(
        daily: AuditTrail, engine: Engine, tmp_path: Path) -> None:
    pem, public = generate_signing_key()
    signing = load_signing_key(pem)
    prune(engine, CUTOFF, tmp_path, signing_key=signing)
    report = forget(engine, "user-0", archive_dir=tmp_path, erased_by="dpo", trail=daily,
                    signing_key=signing)
    assert report.live + report.archived == 8
    assert report.archived and report.files
    with engine.connect() as conn:
        leftovers = conn.execute(text(
            "SELECT count(*) FROM audit_trails WHERE user_id = 'user-0' "
            "OR user_email = 'user0@example.com'")).scalar()
        assert leftovers == 0
        erased = conn.execute(text(
            "SELECT user_email, client_ip, pii_salt, CAST(old_values AS TEXT) "
            "FROM audit_trails WHERE user_id = :e"), {"e": ERASED}).all()
    assert erased and all(r[0] == ERASED and r[1] == ERASED and r[2] is None for r in erased)
    assert not any("@example.com" in (r[3] or "") for r in erased)
    con = duckdb.connect()
    archived = con.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/**/*.parquet') "
                           "WHERE user_id = 'user-0' OR user_email LIKE 'user0@%'").fetchone()
    assert archived == (0,)
    with engine.connect() as conn:
        context = conn.execute(text(
            "SELECT CAST(context AS TEXT) FROM audit_trails WHERE action = 'ERASE'")).scalar()
    assert "user-0" not in str(context)
    assert json.loads(str(context))["records_erased"] == report.live
    assert json.loads(str(context))["erasure"] == report.erasure_id
    result = verify(engine, archive_dir=tmp_path, public_key=load_public_key(public))
    assert result.ok, result.findings
    assert result.erased == 8
    assert load_manifest(tmp_path)["erasures"][0]["erasure"] == report.erasure_id
    assert forget(engine, "user-0", archive_dir=tmp_path).live == 0  # idempotent


def test_fake_erasure_is_detected(daily: AuditTrail, engine: Engine) -> None:
    # blanking a value without the digest (or with a made-up one) breaks the chain
    execute(engine, "UPDATE audit_trails SET user_id = '[erased]', pii_salt = NULL "
            "WHERE seq = 3")
    execute(engine, "UPDATE audit_trails SET user_id = '[erased]', pii = :p WHERE seq = 4",
            p=json.dumps({"d": "00" * 32}))
    assert [(f.kind, f.seq) for f in verify(engine).findings] == [
        ("modified", 3), ("erasure", 4), ("modified", 4)]


def test_manifest_is_signed_and_its_summaries_checked(daily: AuditTrail, engine: Engine,
                                                      tmp_path: Path) -> None:
    pem, public = generate_signing_key()
    key = load_public_key(public)
    prune(engine, CUTOFF, tmp_path, signing_key=load_signing_key(pem))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["signature"]) == 128
    assert verify(engine, archive_dir=tmp_path, public_key=key).ok
    # the manifest's per-stream summary no longer matches what its files hold
    (stream,) = manifest["runs"][0]["streams"]
    manifest["runs"][0]["streams"][stream]["last_seq"] = 14
    manifest["erasures"].append({"at": "2026-01-09", "erasure": "f" * 32, "records": 1,
                                 "files": ["day=2026-01-09/part-x.parquet"]})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    found = verify(engine, archive_dir=tmp_path, public_key=key).findings
    details = [(f.kind, f.detail) for f in found]
    assert ("bad_signature", "manifest.json signature does not verify") in details
    assert sum(k == "archive" and "summary" in d for k, d in details) == 1
    assert ("archive", f"erasure {'f' * 32} of the manifest is not in the store") in details
    assert any(k == "archive" and "no run lists" in d for k, d in details)


def test_unsigned_manifest_is_a_warning(daily: AuditTrail, engine: Engine,
                                        tmp_path: Path) -> None:
    prune(engine, CUTOFF, tmp_path)  # no signing key
    key = load_public_key(generate_signing_key()[1])
    report = verify(engine, archive_dir=tmp_path, public_key=key)
    assert report.ok
    assert [w.detail for w in report.warnings] == ["manifest.json is not signed",
                                                   "the checkpoint is not signed"]
    strict = verify(engine, archive_dir=tmp_path, public_key=key, require_signed=True)
    assert [f.kind for f in strict.findings] == ["unsigned", "unsigned"]
