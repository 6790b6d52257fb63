"""Seals bound the unsealed tail in time: the newest records of a stream, whole short
streams and seals themselves cannot be deleted without a finding."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from integrity_support import BASE, KEY, execute, kinds, verify, write_records
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from otel_audit import AuditTrail
from otel_audit.cli import app
from otel_audit.integrity.checkpoints import create_checkpoints
from otel_audit.integrity.keys import generate_signing_key, load_public_key, load_signing_key
from otel_audit.integrity.seals import all_seals, load_seal_file, seal_all

Factory = Callable[..., AuditTrail]
runner = CliRunner()


def _streams(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT DISTINCT stream FROM audit_trails ORDER BY stream")).scalars())


def _found(engine: Engine, **kwargs: object) -> list[tuple[str, int | None]]:
    return [(f.kind, f.seq) for f in verify(engine, **kwargs).findings]


def test_a_trail_seals_its_stream_at_shutdown(make_trail: Factory, engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 5)
    assert all_seals(engine) == []  # the interval (60 s) is not over
    trail.shutdown()
    (seal,) = all_seals(engine)
    (stream,) = _streams(engine)
    assert (seal.sealer, seal.seq) == (stream, 1)
    assert seal.head_map()[stream][0] == 5
    assert seal.hash == seal.expected_hash()
    report = verify(engine)
    assert report.ok, report.findings
    assert report.seals == 1


def test_deleting_the_newest_records_is_found(make_trail: Factory, engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 20)
    trail.shutdown()
    execute(engine, "DELETE FROM audit_trails WHERE seq > 15")
    assert _found(engine) == [("truncated", 16)]


def test_deleting_a_whole_short_stream_is_found(make_trail: Factory, engine: Engine) -> None:
    short = make_trail(hmac_key=KEY, mode="sync")
    write_records(short, 3)
    short.shutdown()
    (gone,) = _streams(engine)
    other = make_trail(hmac_key=KEY, mode="sync")
    write_records(other, 4)
    other.shutdown()
    execute(engine, "DELETE FROM audit_trails WHERE stream = :s", s=gone)
    report = verify(engine)
    assert [(f.kind, f.stream) for f in report.findings] == [("truncated", gone)]


def test_seals_while_writing(make_trail: Factory, engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync", seal_interval=1e-9)  # every batch
    write_records(trail, 4)
    seals = all_seals(engine)
    assert [s.seq for s in seals] == [1, 2, 3, 4]
    assert [s.prev_hash for s in seals[1:]] == [s.hash for s in seals[:-1]]
    assert [next(iter(s.head_map().values()))[0] for s in seals] == [1, 2, 3, 4]
    assert verify(engine).ok


def test_deleted_or_rewritten_seals_are_found(make_trail: Factory, engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync", seal_interval=1e-9)
    write_records(trail, 4)
    (stream,) = _streams(engine)
    execute(engine, "DELETE FROM audit_seals WHERE seq = 2")
    assert _found(engine) == [("seal", 2)]
    execute(engine, "UPDATE audit_seals SET heads = :h WHERE seq = 3",
            h=json.dumps({stream: [3, "ab" * 32]}, separators=(",", ":")))
    found = verify(engine).findings
    assert ("seal", 3) in {(f.kind, f.seq) for f in found}
    assert all(f.stream == stream for f in found)


def test_signed_seals_and_unsigned_warnings(make_trail: Factory, engine: Engine) -> None:
    pem, public = generate_signing_key()
    key = load_public_key(public)
    trail = make_trail(hmac_key=KEY, mode="sync", signing_key=pem)
    write_records(trail, 3)
    trail.shutdown()
    assert all(s.signature for s in all_seals(engine))
    assert verify(engine, public_key=key, require_signed=True).ok
    other = load_public_key(generate_signing_key()[1])
    assert kinds(verify(engine, public_key=other)) == {"bad_signature"}
    seal_all(engine, "unsigned-sealer")
    report = verify(engine, public_key=key)
    assert report.ok and [w.kind for w in report.warnings] == ["unsigned"]
    assert [(f.kind, f.stream) for f in verify(engine, public_key=key,
                                              require_signed=True).findings] == [
        ("unsigned", "unsigned-sealer")]


def test_seal_all_names_every_stream_and_finds_a_rollback(
        make_trail: Factory, engine: Engine, tmp_path: Path) -> None:
    for count in (3, 5):
        trail = make_trail(hmac_key=KEY, mode="sync", seal_interval=0)
        write_records(trail, count)
        trail.flush()
    streams = _streams(engine)
    first = seal_all(engine, "sealer")
    assert sorted(first.head_map()) == streams
    second = seal_all(engine, "sealer")  # also when nothing changed
    assert (second.seq, second.prev_hash) == (2, first.hash)
    # the attacker deletes a stream's newest records and every seal naming them
    execute(engine, "DELETE FROM audit_trails WHERE stream = :s AND seq > 1", s=streams[0])
    execute(engine, "DELETE FROM audit_seals")
    assert verify(engine).ok  # nothing in the database remembers them...
    assert _found(engine, seals=[first, second]) == [  # ...the exported seals do
        ("seal", 1), ("seal", 2), ("truncated", 2)]


def test_verify_since_still_checks_every_stream_head(make_trail: Factory,
                                                     engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 20)  # record i at BASE + i seconds, seq i + 1
    trail.shutdown()
    since = BASE + dt.timedelta(seconds=14)
    assert verify(engine, since=since).ok
    execute(engine, "DELETE FROM audit_trails WHERE seq >= 15")  # everything after T
    assert _found(engine, since=since) == [("truncated", 20)]  # the sealed head is gone
    execute(engine, "DELETE FROM audit_seals")
    create_checkpoints(engine)  # a checkpoint at 14: a stream head found by --since too
    execute(engine, "DELETE FROM audit_trails WHERE seq = 14")
    assert _found(engine, since=since) == [("truncated", 14)]


def test_seal_command_exports_and_verify_reads_the_file(
        make_trail: Factory, engine: Engine, store_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_HMAC_KEY", KEY)
    pem, public = generate_signing_key()
    monkeypatch.setenv("OTEL_AUDIT_SIGNING_KEY", pem)  # the sealer's own key
    trail = make_trail(hmac_key=KEY, mode="sync", seal_interval=0, signing_key=None)
    write_records(trail, 6)
    trail.flush()
    file = tmp_path / "seals.jsonl"
    result = runner.invoke(app, ["seal", "--db", store_url, "--export", str(file),
                                 "--every", "0.001", "--count", "2", "--name", "svc"])
    assert result.exit_code == 0, result.output
    assert "seal 2 of svc: 1 streams (signed)" in result.stdout
    assert [s.seq for s in load_seal_file(file)] == [1, 2]
    base = ["verify", "--db", store_url, "--seals", str(file), "--public-key", public,
            "--format", "json"]
    assert runner.invoke(app, base).exit_code == 0
    execute(engine, "DELETE FROM audit_seals WHERE sealer = 'svc' AND seq = 2")
    result = runner.invoke(app, base)
    assert result.exit_code == 1
    assert [(f["kind"], f["seq"]) for f in json.loads(result.stdout)["findings"]] == [
        ("seal", 2)]
    assert load_signing_key(pem) is not None


def test_a_seal_never_hangs_the_shutdown_on_a_locked_store(
        make_trail: Factory, sqlite_url: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from otel_audit._internal import log_internal_error

    monkeypatch.setattr(log_internal_error, "_last", {})  # not rate-limited by other tests
    trail = make_trail(sqlite_url, hmac_key=KEY, mode="sync")
    write_records(trail, 2)
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        assert trail.shutdown() is True  # every record was committed before
    finally:
        blocker.rollback()
        blocker.close()
    assert "could not write an audit seal" in caplog.text
    assert all_seals(trail.writer.engine) == []


def test_no_seal_when_the_pipeline_could_not_drain(make_trail: Factory,
                                                   engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 2)
    trail.seals.close(drained=False)
    assert all_seals(engine) == []
    trail.seals.close()
    assert [s.seq for s in all_seals(engine)] == [1]


def test_an_existing_store_is_migrated_to_seals_and_erasures(sqlite_url: str) -> None:
    from sqlalchemy import inspect

    from otel_audit.store.migrate import upgrade
    from otel_audit.store.writer import create_store_engine

    engine = create_store_engine(sqlite_url)
    try:
        upgrade(engine, "0002")  # a store of the previous release
        assert not {"audit_seals", "audit_erasures"} & set(inspect(engine).get_table_names())
        upgrade(engine)
        assert {"audit_seals", "audit_erasures"} <= set(inspect(engine).get_table_names())
        assert seal_all(engine, "after-upgrade").seq == 1
    finally:
        engine.dispose()


def test_seal_command_takes_its_own_key(make_trail: Factory, engine: Engine, store_url: str,
                                        tmp_path: Path) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync", seal_interval=0)
    write_records(trail, 2)
    trail.flush()
    pem, public = generate_signing_key()
    (tmp_path / "sealer.pem").write_text(pem)
    result = runner.invoke(app, ["seal", "--db", store_url, "--key",
                                 str(tmp_path / "sealer.pem")])
    assert result.exit_code == 0, result.output
    (seal,) = all_seals(engine)
    assert seal.signature_ok(load_public_key(public))


def test_unsigned_seals_are_one_warning_per_sealer(make_trail: Factory,
                                                   engine: Engine) -> None:
    # an application that does not hold the signing key seals unsigned every interval
    trail = make_trail(hmac_key=KEY, mode="sync", seal_interval=1e-9)
    write_records(trail, 5)
    key = load_public_key(generate_signing_key()[1])
    report = verify(engine, public_key=key)
    assert report.ok
    assert [(w.kind, w.seq, w.detail) for w in report.warnings] == [
        ("unsigned", 1, "5 seals of this sealer are not signed")]
