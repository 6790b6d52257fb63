"""Streams an all-streams seal should have named: a stream added after the seal with
records dated before it (a backdated forgery), a stream hidden while a seal was made,
and a sealed stream deleted later (each as an attack, on both stores)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import pytest
from integrity_support import KEY, execute, verify
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from otel_audit import AuditTrail
from otel_audit.cli import app
from otel_audit.integrity.seals import all_seals, seal_all

Factory = Callable[..., AuditTrail]
runner = CliRunner()
NOW = dt.datetime.now(dt.UTC)


def _write(make_trail: Factory, count: int, start: dt.datetime) -> str:
    """``count`` records of a new stream dated from ``start``; returns the stream."""
    trail = make_trail(hmac_key=KEY, mode="sync", seal_interval=0)
    for i in range(count):
        trail.record("UPDATE", user_id=f"user-{i}", resource_type="doc",
                     resource_id=f"doc-{i}", timestamp=start + dt.timedelta(seconds=i))
    trail.flush()
    assert trail.chain is not None
    return trail.chain.stream


def _streams(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT DISTINCT stream FROM audit_trails ORDER BY stream")).scalars())


def _inserted(engine: Engine, **kwargs: object) -> list[tuple[str, str | None, int | None]]:
    return [(f.kind, f.stream, f.seq) for f in verify(engine, **kwargs).findings]


def test_a_stream_added_after_the_seal_with_older_records_is_inserted(
        make_trail: Factory, engine: Engine) -> None:
    _write(make_trail, 3, NOW - dt.timedelta(minutes=5))
    seal_all(engine, "sealer")
    (honest,) = _streams(engine)
    assert verify(engine).ok
    # a new stream after the seal, dated as records of the last minutes: commit lag
    _write(make_trail, 2, NOW - dt.timedelta(minutes=2))
    assert verify(engine).ok
    # the attack: a forged stream dated last week, inserted after the seal
    forged = _write(make_trail, 4, NOW - dt.timedelta(days=7))
    assert _first_dated(engine, forged) < NOW - dt.timedelta(days=6)
    report = verify(engine)
    assert [(f.kind, f.stream, f.seq) for f in report.findings] == [("inserted", forged, 1)]
    assert "seal 1 of sealer" in report.findings[0].detail
    assert report.findings[0].record_id is not None
    # the grace is the inputs' assumption: longer than the forgery's age, or off
    assert verify(engine, stream_grace=8 * 86400.0).ok
    assert verify(engine, stream_grace=None).ok
    # a seal made after it names it, but the older seal still says it was not there
    seal_all(engine, "sealer")
    assert _inserted(engine) == [("inserted", forged, 1)]
    # --stream: only that stream's finding
    assert _inserted(engine, stream=honest) == []


def _first_dated(engine: Engine, stream: str) -> dt.datetime:
    with engine.connect() as conn:
        value = conn.execute(text("SELECT timestamp FROM audit_trails WHERE stream = :s "
                                  "ORDER BY seq LIMIT 1"), {"s": stream}).scalar_one()
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def test_a_stream_hidden_while_a_seal_was_made_is_inserted(
        make_trail: Factory, engine: Engine) -> None:
    _write(make_trail, 3, NOW)
    _write(make_trail, 2, NOW)
    seal_all(engine, "sealer")
    hidden, kept = _streams(engine)
    # the attacker hides one stream from the next seal, then puts it back
    execute(engine, "UPDATE audit_trails SET stream = NULL, seq = seq + 1000 "
            "WHERE stream = :s", s=hidden)
    execute(engine, "UPDATE audit_trails SET seq = seq - 1000, stream = :s "
            "WHERE stream IS NULL", s=hidden)
    assert verify(engine).ok
    execute(engine, "UPDATE audit_trails SET stream = 'x-hidden' WHERE stream = :s", s=hidden)
    second = seal_all(engine, "sealer")
    assert hidden not in second.head_map()
    execute(engine, "UPDATE audit_trails SET stream = :s WHERE stream = 'x-hidden'", s=hidden)
    # no time involved: found whatever the grace (the record dates are honest)
    found = _inserted(engine, stream_grace=None)
    assert ("inserted", hidden, 1) in found
    assert all(stream != kept for _, stream, _ in found)
    detail = next(f.detail for f in verify(engine).findings if f.stream == hidden)
    assert "seal 1 of sealer names the stream, its seal 2 does not" in detail


def test_a_sealed_stream_deleted_later_is_truncated(make_trail: Factory,
                                                    engine: Engine) -> None:
    _write(make_trail, 3, NOW)
    _write(make_trail, 2, NOW)
    seal_all(engine, "sealer")
    gone, _ = _streams(engine)
    execute(engine, "DELETE FROM audit_trails WHERE stream = :s", s=gone)
    seal_all(engine, "sealer")  # the next seal no longer names it
    report = verify(engine)
    assert [(f.kind, f.stream) for f in report.findings] == [("truncated", gone)]


def test_a_trails_own_seals_do_not_claim_other_streams(make_trail: Factory,
                                                       engine: Engine) -> None:
    # each trail seals its own stream: a stream dated before another's seal is no finding
    for days in (0, 7):
        trail = make_trail(hmac_key=KEY, mode="sync", seal_interval=0)
        trail.record("READ", user_id="u", timestamp=NOW - dt.timedelta(days=days))
        trail.shutdown()
    assert len(all_seals(engine)) == 2
    assert verify(engine).ok


def test_verify_command_stream_grace(make_trail: Factory, engine: Engine, store_url: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_HMAC_KEY", KEY)
    _write(make_trail, 2, NOW)
    seal_all(engine, "sealer")
    _write(make_trail, 2, NOW - dt.timedelta(days=2))
    base = ["verify", "--db", store_url, "--format", "json"]
    result = runner.invoke(app, base)
    assert result.exit_code == 1, result.output
    assert [f["kind"] for f in json.loads(result.stdout)["findings"]] == ["inserted"]
    assert runner.invoke(app, [*base, "--stream-grace", "259200"]).exit_code == 0
    assert runner.invoke(app, [*base, "--stream-grace", "-1"]).exit_code == 0
