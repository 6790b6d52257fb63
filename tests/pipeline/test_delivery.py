"""Delivery modes on SQLite and PostgreSQL: async + spool, durable journal, sync, mode rules,
overflow policies, the transactional outbox, metrics and file permissions."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from otel_audit import AuditTrail, AuditWriteError, ConfigError
from otel_audit.metrics import METER_NAME
from otel_audit.pipeline.journal import Journal
from otel_audit.pipeline.segments import encode_frame, read_frames
from otel_audit.pipeline.spool import Spool, decode_record, encode_record
from otel_audit.store.writer import PreparedRecord
from otel_audit.testing import InMemoryAuditExporter

Factory = Callable[..., AuditTrail]
DEAD_PG = "postgresql://postgres@127.0.0.1:1/none"


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _prepared(trail: AuditTrail, n: int) -> list[PreparedRecord]:
    return trail.pipeline._prepare(
        [trail.build_record("A", user_id="u", resource_id=str(i), new_values={"token": "t"})
         for i in range(n)])


# ----------------------------------------------------------------- spool and segments


def test_frames_round_trip_and_a_torn_tail_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    with open(path, "wb") as fh:
        fh.write(encode_frame(b"one") + encode_frame(b"two") + encode_frame(b"three")[:-2])
    fd = os.open(path, os.O_RDONLY)
    try:
        assert list(read_frames(fd)) == [b"one", b"two"]
    finally:
        os.close(fd)


def test_spool_codec_keeps_texts_and_chain_position(tmp_path: Path) -> None:
    trail = AuditTrail(f"sqlite:///{tmp_path}/a.db")
    [p] = _prepared(trail, 1)
    sealed = p._replace(stream="s", seq=7, prev_hash="0" * 64, hash="f" * 64)
    back = decode_record(encode_record(sealed))
    assert back == sealed
    assert back.record.new_values == {"token": "[REDACTED]"}  # redacted before spooling
    trail.shutdown(1)


def test_spool_is_private_capped_and_adopted_after_its_owner_is_gone(tmp_path: Path) -> None:
    trail = AuditTrail(f"sqlite:///{tmp_path}/a.db")
    batch = _prepared(trail, 3)
    spool = Spool(str(tmp_path / "spool"), max_bytes=10_000)
    assert spool.append(batch)
    assert not spool.append(_prepared(trail, 100))  # over the cap: refused, not truncated
    assert _mode(str(tmp_path / "spool")) == 0o700
    [name] = os.listdir(tmp_path / "spool")
    assert _mode(str(tmp_path / "spool" / name)) == 0o600
    other = Spool(str(tmp_path / "spool"), max_bytes=10_000)
    other.rescan()
    assert other.oldest() is None  # locked by its owner: never replayed twice
    spool.close()  # owner gone (as after a SIGKILL: the kernel drops the flock)
    other.rescan()
    segment = other.oldest()
    assert segment is not None
    assert [p.record.id for p in other.read(segment)] == [p.record.id for p in batch]
    trail.shutdown(1)


def test_journal_group_commit_and_cleanup(tmp_path: Path) -> None:
    trail = AuditTrail(f"sqlite:///{tmp_path}/a.db")
    journal = Journal(str(tmp_path / "journal"), fsync="batch")
    batch = _prepared(trail, 5)
    for p in batch:
        journal.append(p)
    assert journal.pending == 5 and journal.fsyncs >= 1
    [name] = os.listdir(tmp_path / "journal")
    assert _mode(str(tmp_path / "journal" / name)) == 0o600
    journal.committed(p.record.id for p in batch[:2])
    journal.close()  # 3 uncommitted: the segment stays for the next process
    heir = Journal(str(tmp_path / "journal"))
    assert {p.record.id for p in heir.adopt_orphans()} == {p.record.id for p in batch}
    heir.committed(p.record.id for p in batch)
    heir.close()
    assert os.listdir(tmp_path / "journal") == []
    trail.shutdown(1)


# ----------------------------------------------------------------- modes


def test_store_outage_spools_then_replays_in_order_exactly_once(
    make_trail: Factory, tmp_path: Path
) -> None:
    exporter = InMemoryAuditExporter()
    trail = make_trail(spool_dir=str(tmp_path / "spool"), retry_max_backoff=0.05,
                       exporter=exporter)
    exporter.fail_all()  # the destination is down
    ids = [trail.record("A", user_id="u", resource_id=str(i)).id  # type: ignore[union-attr]
           for i in range(300)]
    assert trail.flush(0.3) is False
    deadline = time.monotonic() + 30
    while trail.stats().spooled < 300 and time.monotonic() < deadline:
        trail.flush(0.1)  # the worker moves every failed batch to the spool
    stats = trail.stats()
    assert stats.spooled == 300 and stats.spool_records == 300 and stats.written == 0
    exporter.recover()
    assert trail.flush(30)
    stats = trail.stats()
    assert (stats.written, stats.replayed, stats.spool_records, stats.failed) == (300, 300, 0, 0)
    assert [r.id for r in exporter.get_finished_records()] == ids  # in order, once each
    assert os.listdir(tmp_path / "spool") == []


def test_a_full_queue_with_a_working_store_holds_the_caller_briefly(
        make_trail: Factory, tmp_path: Path) -> None:
    # slower than the callers but answering: bounded backpressure, nothing goes to disk
    trail = make_trail(spool_dir=str(tmp_path / "spool"), queue_size=5, flush_interval=60,
                       batch_size=1000)
    trail.writer.ensure_schema()  # a first write that migrates is a stall, not slowness
    for i in range(50):
        trail.record("A", user_id="u", resource_id=str(i))
    assert trail.flush(30)
    stats = trail.stats()
    # none spilled unless the machine stalled the worker past the bound (a loaded CI box)
    assert stats.spooled <= 10 and stats.dropped == 0
    assert len(trail.records(limit=100)) == 50


def test_full_queue_spills_to_the_spool_when_the_store_stalls(make_trail: Factory,
                                                              tmp_path: Path) -> None:
    exporter = InMemoryAuditExporter()
    trail = make_trail(spool_dir=str(tmp_path / "spool"), queue_size=5, flush_interval=60,
                       batch_size=5, exporter=exporter)
    exporter.hold()  # a destination that does not answer
    for i in range(100):
        trail.record("A", user_id="u", resource_id=str(i))
    assert trail.stats().spooled > 0  # past the bounded wait the caller spilled to disk
    exporter.release()
    assert trail.flush(30)
    assert len(exporter.get_finished_records()) == 100
    assert trail.stats().dropped == 0


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "block"])
def test_overflow_policy_applies_when_the_spool_is_disabled(
    policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    trail = AuditTrail(DEAD_PG, queue_size=10, spool_max_bytes=0, overflow_policy=policy,
                       queue_full_timeout=0.01, flush_interval=60, batch_size=1000)
    trail.pipeline._start_worker = lambda: None  # type: ignore[method-assign]  # a stuck worker
    ids = [trail.record("A", user_id="u", resource_id=str(i)).id  # type: ignore[union-attr]
           for i in range(30)]
    stats = trail.stats()
    assert stats.dropped == 20 and stats.queue_depth == 10
    queued = [item.id for item in trail.pipeline._queue]  # type: ignore[union-attr]
    assert queued == (ids[-10:] if policy == "drop_oldest" else ids[:10])
    assert "audit queue full" in caplog.text
    trail.shutdown(0.1)


def test_durable_mode_journals_before_returning(make_trail: Factory, tmp_path: Path) -> None:
    trail = make_trail(mode="durable", journal_dir=str(tmp_path / "j"), fsync="always")
    rec = trail.record("A", user_id="u", new_values={"password": "p"})
    assert rec is not None
    [name] = os.listdir(tmp_path / "j")
    data = (tmp_path / "j" / name).read_bytes()
    assert rec.id.encode() in data and b"[REDACTED]" in data and b'"p"' not in data
    assert trail.flush(10)
    assert trail.stats().journal_pending == 0
    assert trail.records()[0].new_values == {"password": "[REDACTED]"}


def test_durable_falls_back_to_sync_when_the_journal_is_unwritable(
    make_trail: Factory, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    trail = make_trail(mode="durable", journal_dir=str(blocker / "j"))
    rec = trail.record("A", user_id="u")
    assert rec is not None
    assert trail.stats().written == 1  # committed before returning instead


def test_per_call_and_policy_modes(make_trail: Factory) -> None:
    trail = make_trail(mode_by_classification={"restricted": "sync"},
                       mode_by_action={"DELETE": "durable"})
    with pytest.raises(ConfigError):
        trail.record("A", user_id="u", mode="sometimes")
    trail.record("READ", user_id="u", data_classification="restricted")
    assert trail.stats().written == 1  # synchronous
    trail.record("DELETE", user_id="u")
    assert trail.stats().journal_pending + trail.stats().written >= 1
    assert trail.flush(10)


def test_restricted_data_fails_closed_on_a_dead_store() -> None:
    trail = AuditTrail(DEAD_PG, mode_by_classification={"restricted": "sync"},
                       spool_max_bytes=0)
    assert trail.record("READ", user_id="u") is not None  # async: queued
    with pytest.raises(AuditWriteError):
        trail.record("READ", user_id="u", data_classification="restricted")
    trail.shutdown(0.1)


# ----------------------------------------------------------------- outbox


def test_outbox_commits_and_rolls_back_with_the_callers_transaction(
    make_trail: Factory, store_url: str
) -> None:
    trail = make_trail()
    trail.writer.ensure_schema()
    engine = create_engine(store_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS invoices (n INTEGER)"))
    try:
        with Session(engine) as session:
            with session.begin():
                session.execute(text("INSERT INTO invoices VALUES (1)"))
                kept = trail.record("CREATE", user_id="u", resource_id="1", session=session,
                                    new_values={"secret": "s"})
            with session.begin():
                session.execute(text("INSERT INTO invoices VALUES (2)"))
                with trail.in_transaction(session):
                    gone = trail.record("CREATE", user_id="u", resource_id="2")
                session.rollback()
        assert kept is not None and gone is not None
        stored = trail.records()
        assert [r.id for r in stored] == [kept.id]
        assert stored[0].new_values == {"secret": "[REDACTED]"}
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM invoices")) == 1
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE invoices"))
        engine.dispose()


def test_outbox_refuses_another_database(make_trail: Factory, tmp_path: Path) -> None:
    trail = make_trail()
    other = create_engine(f"sqlite:///{tmp_path}/other.db")
    with Session(other) as session, pytest.raises(ConfigError, match="not this trail's store"):
        trail.record("A", user_id="u", session=session)
    other.dispose()


# ----------------------------------------------------------------- health signals


def test_metrics_on_the_otel_audit_meter(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    from opentelemetry import metrics

    from otel_audit import metrics as audit_metrics

    # instruments are created once per process on the global provider: point them here
    audit_metrics._instruments.clear()
    original = metrics.get_meter
    metrics.get_meter = provider.get_meter  # type: ignore[assignment]
    try:
        trail = AuditTrail(f"sqlite:///{tmp_path}/a.db", flush_interval=0.01)
        failures = iter([RuntimeError("a hook bug")])

        def hook(_batch: object) -> None:
            for exc in failures:  # fails once, on the first batch
                raise exc

        trail.pipeline.on_written.append(hook)
        for _ in range(3):
            trail.record("A", user_id="u")
        assert trail.flush(10)
        data = reader.get_metrics_data()
    finally:
        metrics.get_meter = original  # type: ignore[assignment]
        audit_metrics._instruments.clear()
    found = {
        m.name: m
        for rm in data.resource_metrics for sm in rm.scope_metrics
        if sm.scope.name == METER_NAME for m in sm.metrics
    }
    assert {"otel_audit.records.written", "otel_audit.export.duration",
            "otel_audit.queue.depth"} <= set(found)
    assert sum(p.value for p in found["otel_audit.records.written"].data.data_points) == 3
    assert sum(p.value for p in found["otel_audit.worker.restarts"].data.data_points) == 1
    trail.shutdown(1)
    provider.shutdown()


def test_state_files_are_owner_only(tmp_path: Path) -> None:
    trail = AuditTrail(f"sqlite:///{tmp_path}/a.db", mode="durable", flush_interval=0.01)
    trail.record("A", user_id="u")
    assert trail.flush(10)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("a.db") and p.is_file()]
    assert tmp_path / "a.db" in files
    for path in files:  # the database and any -wal/-shm file SQLite keeps beside it
        assert _mode(str(path)) == 0o600, path
    journal = tmp_path / "a.db.otel-audit" / "journal"
    assert _mode(str(journal)) == 0o700
    for name in os.listdir(journal):
        assert _mode(str(journal / name)) == 0o600
    trail.shutdown(1)


def test_durable_batch_takes_one_fsync(make_trail: Factory, tmp_path: Path) -> None:
    trail = make_trail(mode="durable", journal_dir=str(tmp_path / "j"), fsync="always")
    records = [trail.build_record("A", user_id="u", resource_id=str(i)) for i in range(50)]
    trail.pipeline.submit_durable_batch(records)
    journal = trail.pipeline.journal
    assert journal is not None and journal.fsyncs == 1 and journal.pending <= 50
    assert trail.flush(10)
    assert journal.pending == 0
    assert len(trail.records(limit=100)) == 50
