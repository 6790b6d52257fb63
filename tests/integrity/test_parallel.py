"""Several verify processes find exactly what one process finds, across range boundaries.

Every ``workers=2`` verification here runs worker processes (each its own connection);
the fixture below fails a test whose parallel verification fell back to one walk.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from integrity_support import KEY, execute, verify, write_records
from sqlalchemy import Engine

from otel_audit import AuditTrail
from otel_audit.integrity import parallel
from otel_audit.integrity.checkpoints import create_checkpoints
from otel_audit.retention import forget


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Ranges of 4 records (20 records: five ranges per stream); yields how each parallel
    verification ended, and fails the test if one fell back to one walk."""
    monkeypatch.setattr(parallel, "MIN_CHUNK", 4)
    original = parallel.verify_parallel
    outcomes: list[str] = []

    def watched(*args: Any, **kwargs: Any) -> dict[str, int]:
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            outcomes.append(f"failed: {exc!r}")
            raise
        outcomes.append("ran")
        return result

    monkeypatch.setattr(parallel, "verify_parallel", watched)
    yield outcomes
    assert outcomes and set(outcomes) == {"ran"}, outcomes


def test_workers_are_processes(small_chunks: list[str], chained: AuditTrail,
                               engine: Engine) -> None:
    """File-backed SQLite and PostgreSQL: worker processes, not threads of this one."""
    assert parallel._context().get_start_method() in ("forkserver", "spawn")
    report = verify(engine, workers=2)
    assert report.ok and report.records == 20 and small_chunks == ["ran"]
    assert not parallel._ENGINES  # the workers' engines live in the workers


def _both(engine: Engine) -> tuple[list[tuple[str, int | None]], list[tuple[str, int | None]]]:
    one = verify(engine, workers=1)
    two = verify(engine, workers=2)
    assert (one.records, one.streams, one.erased) == (two.records, two.streams, two.erased)
    return ([(f.kind, f.seq) for f in one.findings], [(f.kind, f.seq) for f in two.findings])


def test_parallel_verify_matches_single(small_chunks: list[str], chained: AuditTrail,
                                        engine: Engine) -> None:
    one, two = _both(engine)
    assert one == two == []
    execute(engine, "UPDATE audit_trails SET action = 'X' WHERE seq IN (3, 5)")  # inside, edge
    execute(engine, "DELETE FROM audit_trails WHERE seq IN (8, 9)")  # across a boundary
    execute(engine, "UPDATE audit_trails SET hash = :h WHERE seq = 12", h="ab" * 32)
    execute(engine, "DELETE FROM audit_trails WHERE seq = 1")
    one, two = _both(engine)
    assert one == two
    assert ("modified", 3) in one and ("modified", 5) in one
    assert ("deleted", 8) in one and ("deleted", 1) in one


def _all(engine: Engine, **kwargs: object) -> tuple[list[tuple[str, str | None, int | None,
                                                               str | None, str]], ...]:
    one = verify(engine, workers=1, **kwargs)
    two = verify(engine, workers=2, **kwargs)
    assert (one.records, one.streams, one.erased, one.seals, one.checkpoints) == (
        two.records, two.streams, two.erased, two.seals, two.checkpoints)
    return tuple([(f.kind, f.stream, f.seq, f.record_id, f.detail) for f in r.findings]
                 for r in (one, two))


def test_parallel_verify_matches_single_on_every_attack(
        small_chunks: list[str], make_trail: Callable[..., AuditTrail], engine: Engine) -> None:
    first = make_trail(hmac_key=KEY, mode="sync")
    write_records(first, 20)
    first.shutdown()  # sealed at 20
    second = make_trail(hmac_key=KEY, mode="sync")
    write_records(second, 12)
    second.shutdown()
    create_checkpoints(engine)
    forget(engine, "user-2")  # an unsigned erasure: unauthenticated
    # reorder across a range boundary, forge a record, rewrite a hash, cut the tail,
    # fake an erasure, delete a seal
    execute(engine, "UPDATE audit_trails SET seq = -4 WHERE seq = 4")
    execute(engine, "UPDATE audit_trails SET seq = 4 WHERE seq = 5")
    execute(engine, "UPDATE audit_trails SET seq = 5 WHERE seq = -4")
    execute(engine, "UPDATE audit_trails SET seq = -1 WHERE seq = 1")  # the first record
    execute(engine, "UPDATE audit_trails SET seq = 1 WHERE seq = 2")
    execute(engine, "UPDATE audit_trails SET seq = 2 WHERE seq = -1")
    execute(engine, "UPDATE audit_trails SET action = 'X' WHERE seq = 8")
    execute(engine, "UPDATE audit_trails SET hash = :h WHERE seq = 12", h="ab" * 32)
    execute(engine, "UPDATE audit_trails SET user_id = 'mallory' WHERE user_id = '[erased]' "
            "AND seq = 3")
    execute(engine, "DELETE FROM audit_trails WHERE seq > 18")
    execute(engine, "DELETE FROM audit_seals WHERE id = (SELECT MIN(id) FROM audit_seals)")
    one, two = _all(engine)
    assert one == two
    assert {k for k, *_ in one} >= {"reordered", "modified", "truncated", "erasure",
                                    "unauthenticated"}


def test_ranges_are_small_and_cover_every_stream() -> None:
    """Up to RANGES_PER_WORKER ranges a worker (none under MIN_CHUNK records), every seq
    of every stream in exactly one range, in order."""

    class Streams:
        def stream_ranges(self) -> list[tuple[str, int, int]]:
            return [("a", 1, 300_000), ("b", 5, 9), ("c", 1, 20_001), ("d", 7, 1 << 62)]

    ranges = parallel._ranges(Streams(), 2, 320_007)  # type: ignore[arg-type]
    size = max(parallel.MIN_CHUNK, -(-320_007 // (2 * parallel.RANGES_PER_WORKER)))
    assert all(hi - lo + 1 <= size for s, lo, hi in ranges if s != "d")
    # a seq set far ahead: its stream in no more ranges than the others share
    assert len([r for r in ranges if r[0] == "d"]) == 2 * parallel.RANGES_PER_WORKER
    for stream, first, last in Streams().stream_ranges():
        mine = [(lo, hi) for s, lo, hi in ranges if s == stream]
        assert mine[0][0] == first and mine[-1][1] == last
        assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(mine))
    assert len([r for r in ranges if r[0] == "a"]) == -(-300_000 // size)


@pytest.mark.parametrize("workers", [2, 3])
def test_scans_run_once_while_the_workers_walk(
        small_chunks: list[str], make_trail: Callable[..., AuditTrail], engine: Engine,
        monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """The scans beside the walk (rows of no chain, stream births, MACs left unchecked)
    run in this process once the ranges are handed out, once, and find what one walk's
    do: on a store with rows of no chain, a gap, a modified record, several streams."""
    from otel_audit.integrity import sources
    from otel_audit.integrity.sources import StoreSource

    for count in (20, 12, 7):
        trail = make_trail(hmac_key=KEY, mode="sync")  # verified without it below
        write_records(trail, count)
        trail.shutdown()
    execute(engine, "UPDATE audit_trails SET stream = NULL WHERE seq = 3")
    execute(engine, "UPDATE audit_trails SET hash = NULL WHERE seq = 9")
    execute(engine, "UPDATE audit_trails SET seq = NULL WHERE seq = 15")
    execute(engine, "UPDATE audit_trails SET action = 'X' WHERE seq = 6")
    calls: list[str] = []
    original = StoreSource.unchained

    def unchained(self: StoreSource, hashless: list[str] | None = None) -> list[str]:
        calls.append("unchained")
        return original(self, hashless)

    monkeypatch.setattr(StoreSource, "unchained", unchained)
    watched = parallel.verify_parallel

    def with_meanwhile(*args: Any, **kwargs: Any) -> dict[str, int]:
        assert callable(kwargs.get("meanwhile"))
        calls.append("parallel")
        return watched(*args, **kwargs)

    monkeypatch.setattr(parallel, "verify_parallel", with_meanwhile)
    one = verify(engine, workers=1, key=None)
    assert calls == ["unchained"]
    many = verify(engine, workers=workers, key=None)
    assert calls == ["unchained", "parallel", "unchained"]
    assert [(f.kind, f.stream, f.seq, f.record_id, f.detail) for f in one.findings] == [
        (f.kind, f.stream, f.seq, f.record_id, f.detail) for f in many.findings]
    assert (one.records, one.streams, one.macs_unchecked) == (
        many.records, many.streams, many.macs_unchecked)
    assert {f.kind for f in one.findings} >= {"inserted", "modified", "deleted"}
    # no stream (seq 3 of each stream), no hash (seq 9 of two), no seq (seq 15 of one)
    assert len([f for f in many.findings if f.detail == "the record belongs to no chain"]
               ) == 6
    assert one.macs_unchecked == 39 - 3  # without the key (seq 3 of each stream: no stream)
    # more rows of no chain than are named: the same ones (the table pass names them)
    monkeypatch.setattr(sources, "UNCHAINED", 4)
    one, many = verify(engine, workers=1, key=None), verify(engine, workers=workers, key=None)
    assert [(f.kind, f.record_id) for f in one.findings] == [
        (f.kind, f.record_id) for f in many.findings]
    assert len([f for f in many.findings if f.detail == "the record belongs to no chain"]
               ) == 4
    assert small_chunks == ["ran", "ran"]


def test_a_malformed_seq_drops_the_ranges_quietly(
        chained: AuditTrail, engine: Engine, store_url: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A non-integer seq, found while the workers walk: one walk decides, no warning."""
    if not store_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's typed columns refuse a text seq")
    monkeypatch.setattr(parallel, "MIN_CHUNK", 4)
    execute(engine, "UPDATE audit_trails SET seq = 'six' WHERE seq = 6")
    execute(engine, "UPDATE audit_trails SET action = 'X' WHERE seq = 15")
    one = verify(engine, workers=1)
    with caplog.at_level("WARNING"):
        two = verify(engine, workers=2)
    assert "parallel verification unavailable" not in caplog.text
    assert [(f.kind, f.seq, f.detail) for f in one.findings] == [
        (f.kind, f.seq, f.detail) for f in two.findings]
    assert ("malformed", None, "seq is not an integer (text)") in [
        (f.kind, f.seq, f.detail) for f in two.findings]
    assert ("modified", 15) in [(f.kind, f.seq) for f in two.findings]


@pytest.mark.parametrize("seq", ["4.5", "6.5", "-0.5", "20.5", "X'06'"])
def test_a_real_or_binary_seq_anywhere_drops_the_ranges_quietly(
        chained: AuditTrail, engine: Engine, store_url: str, seq: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A real seq between two ranges (4 and 5 with ranges of 4), inside one, before the
    first or after the last record, or a BLOB: the workers' ranges leave none out, and
    one walk reports it as when it runs alone."""
    if not store_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's typed columns refuse a real or binary seq")
    monkeypatch.setattr(parallel, "MIN_CHUNK", 4)
    execute(engine, f"UPDATE audit_trails SET seq = {seq} WHERE seq = 5")
    one = verify(engine, workers=1)
    with caplog.at_level("WARNING"):
        two = verify(engine, workers=2)
    assert "parallel verification unavailable" not in caplog.text
    found = [(f.kind, f.seq, f.detail) for f in two.findings]
    assert found == [(f.kind, f.seq, f.detail) for f in one.findings]
    detail = "binary value in seq" if seq.startswith("X") else "seq is not an integer (real)"
    assert ("malformed", None, detail) in found
    assert ("deleted", 5) in [(kind, at) for kind, at, _ in found]


def test_a_seq_set_far_ahead_is_found_in_few_ranges(small_chunks: list[str],
                                                     chained: AuditTrail,
                                                     engine: Engine) -> None:
    """A record moved to seq 2**62: the ranges stay few (not one for every 4 seqs up to
    it), and the workers find what one walk finds."""
    execute(engine, f"UPDATE audit_trails SET seq = {1 << 62} WHERE seq = 20")
    one, two = _all(engine)
    assert one == two
    assert [(kind, seq) for kind, _, seq, *_ in one] == [("deleted", 20), ("modified", 1 << 62)]


def test_progress_takes_back_the_workers_count_when_one_walk_starts_over(
        chained: AuditTrail, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # workers that reported part of the store, then failed: the walk in this process
    # counts every record again, and the bar ends at the store's size, not past it
    def fails_midway(*args: Any, progress: Callable[[int], None], **kwargs: Any) -> None:
        progress(7)
        raise RuntimeError("a worker died")

    monkeypatch.setattr(parallel, "verify_parallel", fails_midway)
    steps: list[int] = []
    report = verify(engine, workers=2, progress=steps.append)
    assert report.ok and report.records == 20
    assert steps[:2] == [7, -7] and sum(steps) == 20
    assert all(sum(steps[:i]) <= 20 for i in range(len(steps) + 1))
