"""The worker never dies: an unexpected error anywhere on the pipeline's threads is
counted, logged, and the records it held are written, spooled or counted; a record the
store refuses never takes its batch with it."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from otel_audit import AuditTrail
from otel_audit.errors import StoreError
from otel_audit.integrity.verify import verify_trail
from otel_audit.pipeline import prepare as prepare_module
from otel_audit.pipeline.quarantine import quarantine_dir_for
from otel_audit.pipeline.segments import read_frames
from otel_audit.pipeline.spool import Spool, decode_record
from otel_audit.record import NORMALISATION_KEY, SCHEMA_VERSION, AuditRecord, normalise
from otel_audit.store.reader import row_to_record
from otel_audit.store.schema import RECORD_COLUMNS, audit_trails
from otel_audit.store.writer import PreparedRecord
from otel_audit.testing import InMemoryAuditExporter

Factory = Callable[..., AuditTrail]


def _count(trail: AuditTrail, action: str | None = None) -> int:
    query = select(func.count()).select_from(audit_trails)
    if action is not None:
        query = query.where(audit_trails.c.action == action)
    with trail.writer.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _stored(trail: AuditTrail, record_id: str) -> AuditRecord:
    columns = [audit_trails.c[name] for name in RECORD_COLUMNS]
    with trail.writer.engine.connect() as conn:
        row = conn.execute(select(*columns).where(audit_trails.c.id == record_id)).mappings().one()
    return row_to_record(row)


def _notes(record: AuditRecord) -> list[dict[str, Any]]:
    context = record.context if isinstance(record.context, dict) else {}
    notes = context.get(NORMALISATION_KEY, [])
    return notes if isinstance(notes, list) else []


def _quarantined(spool_dir: Path) -> list[dict[str, Any]]:
    directory = quarantine_dir_for(str(spool_dir))
    docs = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            docs += [json.loads(payload) for payload in read_frames(fd)]
        finally:
            os.close(fd)
    return docs


def _good(trail: AuditTrail, n: int, action: str = "GOOD") -> None:
    for i in range(n):
        trail.record(action, user_id=f"u{i}", new_values={"i": i})


class _Once:
    """Raises ``exc`` the first time it is called, then calls ``then``."""

    def __init__(self, exc: BaseException, then: Callable[..., Any]) -> None:
        self.exc = exc
        self.then = then
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise self.exc
        return self.then(*args, **kwargs)


def test_an_unexpected_error_in_the_worker_loop_is_counted_and_it_goes_on(
        make_trail: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trail = make_trail(spool_dir=str(tmp_path / "spool"))
    pipeline = trail.pipeline
    pipeline._maybe_replay = _Once(ZeroDivisionError("never expected"),  # type: ignore[method-assign]
                                   pipeline._maybe_replay)
    with caplog.at_level(logging.ERROR, logger="otel_audit"):
        _good(trail, 30)
        assert trail.flush(10)
    stats = trail.stats()
    assert stats.worker_restarts == 1
    assert stats.written == 30 and stats.failed == 0
    assert any("ZeroDivisionError" in r.getMessage() for r in caplog.records)
    _good(trail, 5, "LATER")
    assert trail.flush(10)
    assert _count(trail, "LATER") == 5
    assert verify_trail(trail.writer.engine).ok


def _one_chain(exporter: InMemoryAuditExporter) -> None:
    """Every exported record sealed once: consecutive positions, linked hashes."""
    kept = exporter.prepared
    assert [p.seq for p in kept] == list(range(1, len(kept) + 1))
    assert [p.prev_hash for p in kept[1:]] == [p.hash for p in kept[:-1]]


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()],
                         ids=["SystemExit", "KeyboardInterrupt"])
def test_an_export_failing_once_unexpectedly_loses_no_record(
        make_trail: Factory, tmp_path: Path, exc: BaseException) -> None:
    # not an Exception, so not taken for a retryable failure: the store thread's last
    # resort counts it and accounts for the batch
    for spool in (str(tmp_path / "spool"), None):  # spooled and replayed; isolated in place
        exporter = InMemoryAuditExporter()
        exporter.fail_next(exc)
        trail = make_trail(spool_dir=spool, spool_max_bytes=0 if spool is None else 1 << 20,
                           exporter=exporter)
        _good(trail, 40)
        assert trail.flush(10)
        stats = trail.stats()
        assert stats.worker_restarts == 1
        assert stats.written == 40 and stats.failed == 0
        assert len(exporter.get_finished_records()) == 40
        _one_chain(exporter)
        trail.shutdown(5)


def test_a_sealer_failing_once_still_seals_every_record(make_trail: Factory) -> None:
    trail = make_trail()
    sealer = trail.pipeline.sealers[0]
    trail.pipeline.sealers[0] = _Once(RuntimeError("sealer bug"), sealer)
    _good(trail, 25)
    assert trail.flush(10)
    assert trail.stats().written == 25
    assert verify_trail(trail.writer.engine).ok


class _Explodes:
    def __bool__(self) -> bool:
        raise RuntimeError("no truth value")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


def test_a_record_no_sealer_can_hash_is_sealed_in_its_safe_form(make_trail: Factory) -> None:
    # a prepared record (as the journal hands them back) skips normalisation: the chain
    # row is built from its values as they are, and this one's success cannot be read
    trail = make_trail()
    record = AuditRecord(id=uuid.uuid4().hex, timestamp=dt.datetime.now(dt.UTC),
                         action="ODD", user_id="u", success=_Explodes())  # type: ignore[arg-type]
    _good(trail, 3)
    trail.pipeline.submit(PreparedRecord(record, dict.fromkeys(("old_values", "new_values",
                                                                "changes", "context"))))
    _good(trail, 3, "AFTER")
    assert trail.flush(10)
    assert trail.stats().written == 7 and trail.stats().failed == 0
    stored = _stored(trail, record.id)
    assert stored.success is True
    assert {"field": "success", "kind": "converted", "stored": True,
            "original": "<unrepresentable _Explodes>"} in _notes(stored)
    assert verify_trail(trail.writer.engine).ok


def test_post_write_hooks_failing_lose_and_duplicate_nothing(make_trail: Factory) -> None:
    trail = make_trail()
    seen: list[int] = []

    def counting(batch: Sequence[PreparedRecord]) -> None:
        seen.append(len(batch))

    trail.pipeline.on_written[:0] = [_Once(RuntimeError("hook bug"), counting),
                                     _Once(KeyboardInterrupt(), counting)]
    _good(trail, 30)
    assert trail.flush(10)
    assert trail.stats().written == 30 and _count(trail) == 30
    assert trail.stats().spooled == 0  # a committed batch is never written again
    assert trail.stats().worker_restarts == 2  # each failure counted once


def test_a_value_normalisation_cannot_handle_is_stored_in_its_safe_form(
        make_trail: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    # defence in depth: even if normalise() raised for some value, the record is kept
    def broken(record: AuditRecord, **kwargs: Any) -> Any:
        if record.action == "BAD":
            raise OverflowError("a value normalise() did not expect")
        return normalise(record, **kwargs)

    monkeypatch.setattr(prepare_module, "normalise", broken)
    monkeypatch.setattr(prepare_module, "plain_texts", lambda *a, **k: None)
    trail = make_trail()
    _good(trail, 5)
    bad = trail.record("BAD", user_id="u", context={"secret_token": "s3cr3t", "k": [1, 2]})
    _good(trail, 5, "AFTER")
    assert trail.flush(10)
    assert trail.stats().written == 11 and trail.stats().failed == 0
    stored = _stored(trail, bad.id)
    assert stored.action == "BAD"
    assert stored.context["k"] == [1, 2]
    assert "s3cr3t" not in json.dumps(stored.context)  # redacted in its safe form too
    assert any(n["kind"] == "safe_form" and "OverflowError" in n["reason"]
               for n in _notes(stored))
    assert verify_trail(trail.writer.engine).ok


def _exported(exporter: InMemoryAuditExporter, record_id: str) -> AuditRecord:
    [record] = [r for r in exporter.get_finished_records() if r.id == record_id]
    return record


def _holes(exporter: InMemoryAuditExporter) -> set[int]:
    """The chain positions spent on no exported record."""
    seqs = {p.seq for p in exporter.prepared if p.seq is not None}
    return set(range(1, max(seqs) + 1)) - seqs


def _missing(report: Any) -> set[int]:
    """The chain positions verify reports as deleted."""
    out: set[int] = set()
    for finding in report.findings:
        assert finding.kind == "deleted", finding
        span = finding.detail.split()[1]
        first, _, last = span.partition("..")
        out.update(range(int(first), int(last or first) + 1))
    return out


def test_a_refused_record_never_takes_its_batch_and_ends_in_quarantine(
        make_trail: Factory, tmp_path: Path) -> None:
    spool_dir = tmp_path / "state" / "spool"
    # the destination refuses, for its content, every batch holding the record (as a
    # database refuses a batch holding a value out of a column's range)
    exporter = InMemoryAuditExporter(reject=lambda p: p.record.action == "POISON")
    trail = make_trail(spool_dir=str(spool_dir), batch_size=64, exporter=exporter)
    _good(trail, 20)
    poison = trail.record("POISON", user_id="u")
    _good(trail, 20, "AFTER")
    assert trail.flush(10)
    stats = trail.stats()
    assert (stats.written, stats.failed, stats.quarantined) == (40, 1, 1)
    assert len(exporter.get_finished_records()) == 40
    docs = _quarantined(spool_dir)
    kept = [decode_record(json.dumps(doc).encode()) for doc in docs]
    # the original (sealed before the store refused it) and its safe form (sealed, then
    # refused too): both kept, each with the chain position it spent
    assert [k.record.id for k in kept] == [poison.id, poison.id]
    assert "refused by the store" in docs[0]["q"] and "safe form" in docs[1]["q"]
    assert oct(os.stat(quarantine_dir_for(str(spool_dir))).st_mode & 0o777) == "0o700"
    _good(trail, 3, "LATER")
    assert trail.flush(10)
    assert [r.action for r in exporter.get_finished_records()[-3:]] == ["LATER"] * 3
    # the chain has a hole exactly where the quarantine explains one
    assert _holes(exporter) == {k.seq for k in kept}


def test_a_record_refused_only_as_it_was_lands_in_its_safe_form(
        make_trail: Factory, tmp_path: Path) -> None:
    exporter = InMemoryAuditExporter(
        reject=lambda p: p.record.action == "ODD" and not _notes(p.record))
    trail = make_trail(spool_dir=str(tmp_path / "spool"), exporter=exporter)
    _good(trail, 10)
    odd = trail.record("ODD", user_id="u")
    _good(trail, 10, "AFTER")
    assert trail.flush(10)
    stats = trail.stats()
    assert (stats.written, stats.failed) == (21, 0)
    notes = _notes(_exported(exporter, odd.id))
    assert any(n["kind"] == "safe_form" for n in notes)
    assert any(n["kind"] == "resealed" and n["seq"] for n in notes)


def test_an_out_of_range_schema_version_is_stored_normalised(make_trail: Factory) -> None:
    trail = make_trail()
    record = AuditRecord(id=uuid.uuid4().hex, timestamp=dt.datetime.now(dt.UTC),
                         action="VERSION", user_id="u", schema_version=2**70)
    # and one that skips normalisation (as journalled records do): the pipeline's guard
    # replaces it before it is sealed, so its refusal cannot leave a hole in the chain
    prepared = record._replace(id=uuid.uuid4().hex, schema_version=-(2**63))
    _good(trail, 5)
    trail.submit(record)
    trail.pipeline.submit(PreparedRecord(prepared, dict.fromkeys(("old_values", "new_values",
                                                                  "changes", "context"))))
    _good(trail, 5, "AFTER")
    assert trail.flush(10)
    stats = trail.stats()
    assert (stats.written, stats.failed, stats.retried) == (12, 0, 0)
    for stored in (_stored(trail, record.id), _stored(trail, prepared.id)):
        assert -(2**31) <= stored.schema_version < 2**31
        assert any(n["field"] == "schema_version" for n in _notes(stored))
    assert {"field": "schema_version", "kind": "out_of_range", "stored": SCHEMA_VERSION,
            "original": str(-(2**63))} in _notes(_stored(trail, prepared.id))
    assert verify_trail(trail.writer.engine).ok


def test_a_poison_record_in_the_spool_never_blocks_it(make_trail: Factory,
                                                      tmp_path: Path) -> None:
    # a spool left by another process holds a record the store refuses as it is
    spool_dir = tmp_path / "spool"
    spool = Spool(str(spool_dir), 1 << 20)
    records = [AuditRecord(id=uuid.uuid4().hex, timestamp=dt.datetime.now(dt.UTC),
                           action="SPOOLED", user_id="u", context={"i": i},
                           schema_version=2**40 if i == 3 else 1) for i in range(8)]
    spool.append([PreparedRecord(*normalise(r)) for r in records])
    spool.close()
    trail = make_trail(spool_dir=str(spool_dir))
    _good(trail, 4)
    assert trail.flush(10)
    stats = trail.stats()
    assert stats.spool_records == 0 and stats.failed == 0
    assert _count(trail, "SPOOLED") == 8 and _count(trail, "GOOD") == 4
    assert any(n["field"] == "schema_version" for n in _notes(_stored(trail, records[3].id)))
    assert verify_trail(trail.writer.engine).ok


def test_an_error_while_a_batch_is_prepared_keeps_every_record_of_it(
        make_trail: Factory) -> None:
    trail = make_trail()
    pipeline = trail.pipeline
    pipeline._seal_ahead = _Once(MemoryError(), pipeline._seal_ahead)  # type: ignore[method-assign]
    _good(trail, 20)
    assert trail.flush(10)
    _good(trail, 5, "AFTER")
    assert trail.flush(10)
    stats = trail.stats()
    assert (stats.written, stats.failed, stats.worker_restarts) == (25, 0, 1)
    assert _count(trail, "GOOD") == 20
    assert verify_trail(trail.writer.engine).ok  # sealed by the store stage instead


def test_a_sealed_record_the_store_refuses_never_blocks_the_spool(
        make_trail: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a spool written by a trail whose guard did not exist: one record sealed with a
    # schema_version no store column holds (SQLite: OverflowError; PostgreSQL: 22003)
    spool_dir = tmp_path / "state" / "spool"
    down = InMemoryAuditExporter()
    down.fail_all()  # its destination is down: everything goes to the spool
    first = make_trail(spool_dir=str(spool_dir), exporter=down)
    monkeypatch.setattr(first.pipeline, "_guard", lambda prepared: None)
    _good(first, 5, "BEFORE")
    bad = AuditRecord(id=uuid.uuid4().hex, timestamp=dt.datetime.now(dt.UTC),
                      action="VERSION", user_id="u", schema_version=2**70)
    first.pipeline.submit(PreparedRecord(bad, dict.fromkeys(("old_values", "new_values",
                                                             "changes", "context"))))
    _good(first, 5, "AFTER")
    assert not first.flush(0.5)
    first.shutdown(1)
    assert first.stats().spooled == 11
    second = make_trail(spool_dir=str(spool_dir))
    assert second.flush(10)
    stats = second.stats()
    assert stats.spool_records == 0 and stats.failed == 0
    assert _count(second, "BEFORE") == 5 and _count(second, "AFTER") == 5
    stored = _stored(second, bad.id)  # in its safe form, at a new position
    assert any(n["kind"] == "resealed" for n in _notes(stored))
    [kept] = [decode_record(json.dumps(doc).encode()) for doc in _quarantined(spool_dir)]
    assert kept.record.id == bad.id and kept.seq is not None
    assert _missing(verify_trail(second.writer.engine)) == {kept.seq}


@pytest.mark.postgres
def test_a_copied_batch_keeps_its_good_records_around_a_refused_one(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trail = AuditTrail(pg_url, flush_interval=0.01, spool_dir=str(tmp_path / "spool"))
    try:
        monkeypatch.setattr(trail.pipeline, "_guard", lambda prepared: None)
        refused: list[StoreError] = []
        write = trail.writer.write

        def watched(batch: Sequence[PreparedRecord], **options: Any) -> None:
            try:
                write(batch, **options)
            except StoreError as exc:
                refused.append(exc)
                raise

        trail.writer.write = watched  # type: ignore[method-assign]
        _good(trail, 10, "BEFORE")
        assert trail.flush(10)
        bad = AuditRecord(id=uuid.uuid4().hex, timestamp=dt.datetime.now(dt.UTC),
                          action="VERSION", user_id="u", schema_version=2**40)
        for i in range(30):  # one batch, sealed and copied: 22003 from the server
            if i == 15:
                trail.pipeline.submit(PreparedRecord(bad, dict.fromkeys(
                    ("old_values", "new_values", "changes", "context"))))
            trail.record("BATCH", user_id="u", new_values={"i": i})
        assert trail.flush(10)
        _good(trail, 10, "AFTER")
        assert trail.flush(10)
        stats = trail.stats()
        assert (stats.written, stats.failed, stats.worker_restarts) == (51, 0, 0)
        assert _count(trail, "BATCH") == 30 and _count(trail, "AFTER") == 10
        assert any(n["kind"] == "resealed" for n in _notes(_stored(trail, bad.id)))
        assert refused and not any(e.transient for e in refused)  # the batch, then halves
    finally:
        trail.shutdown(5)


def test_an_export_failing_unexpectedly_several_times_is_replayed_with_back_off(
        make_trail: Factory, tmp_path: Path) -> None:
    exporter = InMemoryAuditExporter()
    exporter.fail_next(SystemExit(3), times=3)  # the live write, then two replays
    trail = make_trail(spool_dir=str(tmp_path / "spool"), retry_max_backoff=0.2,
                       exporter=exporter)
    _good(trail, 15)
    assert trail.flush(20)
    stats = trail.stats()
    assert (stats.written, stats.failed, stats.spool_records) == (15, 0, 0)
    assert stats.worker_restarts == 3  # each failure counted once, none retried in a spin
    assert len(exporter.calls) == 4
