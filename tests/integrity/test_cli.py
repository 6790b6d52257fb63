"""The integrity and retention commands, end to end through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from integrity_support import KEY, execute, write_records
from sqlalchemy import Engine
from typer.testing import CliRunner

from otel_audit import AuditTrail
from otel_audit.cli import app
from otel_audit.integrity.keys import generate_signing_key

runner = CliRunner()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, store_url: str) -> str:
    monkeypatch.setenv("OTEL_AUDIT_HMAC_KEY", KEY)
    return store_url


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout


def test_verify_ok_and_json(cli_env: str, chained: AuditTrail) -> None:
    code, out = _run("verify", "--db", cli_env)
    assert code == 0, out
    assert out.startswith("OK 20 records in 1 streams")
    code, out = _run("verify", "--db", cli_env, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] is True and doc["records"] == 20 and doc["findings"] == []


def test_verify_reports_findings_with_exit_status_1(cli_env: str, chained: AuditTrail,
                                                    engine: Engine) -> None:
    execute(engine, "UPDATE audit_trails SET action = 'X' WHERE seq = 2")
    execute(engine, "DELETE FROM audit_trails WHERE seq = 5")
    code, out = _run("verify", "--db", cli_env, "--format", "json")
    assert code == 1
    found = [(f["kind"], f["seq"]) for f in json.loads(out)["findings"]]
    assert found == [("modified", 2), ("deleted", 5)]
    code, out = _run("verify", "--db", cli_env)
    assert code == 1
    assert "FAILED" in out and "modified" in out


def test_signed_checkpoint_export_detects_rollback(cli_env: str, chained: AuditTrail,
                                                   engine: Engine, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "signing.pem"
    code, out = _run("checkpoint", "--new-key", str(key_file))
    assert code == 0
    public = out.split("public key:")[1].split()[0]
    assert key_file.stat().st_mode & 0o077 == 0
    monkeypatch.setenv("OTEL_AUDIT_SIGNING_KEY", str(key_file))
    code, out = _run("checkpoint", "--db", cli_env, "--export", str(tmp_path / "cp.json"))
    assert code == 0 and "1 checkpoints written (1 signed)" in out
    args = ("verify", "--db", cli_env, "--checkpoints", str(tmp_path / "cp.json"),
            "--public-key", public, "--format", "json")
    assert _run(*args)[0] == 0
    execute(engine, "DELETE FROM audit_trails WHERE seq > 17")
    execute(engine, "DELETE FROM audit_checkpoints")
    code, out = _run(*args)
    assert code == 1
    assert [f["kind"] for f in json.loads(out)["findings"]] == ["truncated"]


def test_prune_hold_forget_commands(cli_env: str, make_trail: Callable[..., AuditTrail],
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pem, public = generate_signing_key()
    monkeypatch.setenv("OTEL_AUDIT_SIGNING_KEY", pem)
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 20, day_step=0.25)
    archive = str(tmp_path / "archive")
    code, out = _run("hold", "add", "--db", cli_env, "--user", "user-3", "--reason", "case 7",
                     "--by", "legal")
    assert code == 0 and "placed on user user-3" in out
    hold = out.split()[1]  # the ID (PostgreSQL's sequence outlives the tests' TRUNCATE)
    code, out = _run("hold", "list", "--db", cli_env)
    assert "case 7" in out
    code, out = _run("prune", "--db", cli_env, "--before", "2026-01-03", "--archive", archive)
    assert code == 0, out
    assert "archived 6 records" in out and "kept 2 under legal hold" in out
    code, out = _run("forget", "--db", cli_env, "--user", "user-0", "--archive", archive)
    assert code == 0, out
    assert "erased 3 live and 2 archived records" in out
    code, out = _run("verify", "--db", cli_env, "--archive", archive)
    assert code == 1 and "unauthenticated" in out  # erasures need the public key
    code, out = _run("verify", "--db", cli_env, "--archive", archive, "--public-key", public)
    assert code == 0, out
    assert "5 erased" in out
    assert _run("hold", "release", "--db", cli_env, hold)[0] == 0
    assert _run("hold", "release", "--db", cli_env, hold)[0] == 1


def test_prune_needs_an_archive(cli_env: str) -> None:
    code, _ = _run("prune", "--db", cli_env, "--before", "2026-01-01")
    assert code == 2


def test_verify_says_unsigned_and_require_signed_makes_it_fatal(
        cli_env: str, chained: AuditTrail, tmp_path: Path) -> None:
    assert _run("checkpoint", "--db", cli_env)[0] == 0  # no signing key: unsigned
    public = generate_signing_key()[1]
    result = runner.invoke(app, ["verify", "--db", cli_env, "--public-key", public])
    assert result.exit_code == 0, result.output
    assert "warning: unsigned" in result.stderr and "bad_signature" not in result.output
    code, out = _run("verify", "--db", cli_env, "--public-key", public, "--require-signed",
                     "--format", "json")
    assert code == 1
    doc = json.loads(out)
    assert [f["kind"] for f in doc["findings"]] == ["unsigned"] and doc["warnings"] == []


def test_verify_errors_exit_with_status_2(cli_env: str, chained: AuditTrail,
                                          tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    for option, value in (("--checkpoints", str(tmp_path / "bad.json")),
                          ("--seals", str(tmp_path / "missing.jsonl")),
                          ("--public-key", "not-a-key")):
        assert _run("verify", "--db", cli_env, option, value)[0] == 2, option


def test_verify_accepts_rotated_public_keys(cli_env: str, make_trail: Callable[..., AuditTrail],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    old_pem, old_public = generate_signing_key()
    new_pem, new_public = generate_signing_key()
    for pem in (old_pem, new_pem):  # a key rotation between two runs of the application
        trail = make_trail(hmac_key=KEY, mode="sync", signing_key=pem)
        write_records(trail, 3)
        trail.shutdown()
    base = ("verify", "--db", cli_env, "--require-signed", "--format", "json")
    code, out = _run(*base, "--public-key", new_public)
    assert code == 1
    assert {f["kind"] for f in json.loads(out)["findings"]} == {"bad_signature"}
    code, out = _run(*base, "--public-key", old_public, "--public-key", new_public)
    assert code == 0, out
    assert json.loads(out)["seals"] == 2


def test_a_key_counts_only_in_its_validity_period(
        cli_env: str, make_trail: Callable[..., AuditTrail], tmp_path: Path) -> None:
    import datetime as dt

    pem, public = generate_signing_key()
    trail = make_trail(hmac_key=KEY, mode="sync", signing_key=pem)
    write_records(trail, 3)
    trail.shutdown()  # a seal signed now
    now = dt.datetime.now(dt.UTC)
    args = ("verify", "--db", cli_env, "--require-signed", "--format", "json",
            "--keys", str(tmp_path / "keys.json"))
    for not_before, not_after, ok in ((now - dt.timedelta(days=1), None, True),
                                      (now - dt.timedelta(days=2), now - dt.timedelta(days=1),
                                       False),  # retired before it signed
                                      (now + dt.timedelta(days=1), None, False)):
        (tmp_path / "keys.json").write_text(json.dumps({"keys": [
            {"public_key": public, "not_before": not_before.isoformat(),
             "not_after": not_after.isoformat() if not_after else None}]}))
        code, out = _run(*args)
        assert code == (0 if ok else 1), out
        if not ok:
            assert {f["kind"] for f in json.loads(out)["findings"]} == {"bad_signature"}
    (tmp_path / "keys.json").write_text("[]")
    assert _run(*args)[0] == 2
