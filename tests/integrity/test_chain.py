"""The chain sealer in a trail: order, retries, failures, forks, processes, named streams."""

from __future__ import annotations

import datetime as dt
import inspect
import multiprocessing
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from integrity_support import KEY, execute, kinds, verify, write_records
from sqlalchemy import Engine, text

from otel_audit import AuditTrail
from otel_audit.errors import AuditWriteError, StoreError
from otel_audit.integrity.chain import ChainSealer
from otel_audit.record import AuditRecord, normalise
from otel_audit.store.writer import PreparedRecord, StoreWriter
from otel_audit.testing import InMemoryAuditExporter

Factory = Callable[..., AuditTrail]


def _streams(engine: Engine) -> dict[str, list[int]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT stream, seq FROM audit_trails ORDER BY stream, seq"))
        out: dict[str, list[int]] = {}
        for stream, seq in rows:
            out.setdefault(stream, []).append(seq)
    return out


def test_async_and_sync_writers_share_one_gapless_chain(make_trail: Factory,
                                                        engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY)

    def worker(offset: int) -> None:
        for i in range(30):
            trail.record("READ", user_id=f"t{offset}", resource_id=str(i),
                         mode="sync" if i % 5 == 0 else None)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trail.flush(10)
    streams = _streams(engine)
    assert list(streams) == [trail.chain.stream]
    assert streams[trail.chain.stream] == list(range(1, 121))
    assert verify(engine).ok


def test_salts_are_fresh_for_every_record_and_never_a_parents(monkeypatch: pytest.MonkeyPatch,
                                                               ) -> None:
    from otel_audit.integrity import chain as chain_module

    monkeypatch.setattr(chain_module, "_SALT_POOL", 16 * 40)  # a refill every 40 records
    draws = []
    urandom = os.urandom
    monkeypatch.setattr(chain_module.os, "urandom",
                        lambda n: draws.append(n) or urandom(n))  # type: ignore[func-returns-value]
    sealer = ChainSealer(service_name="svc", hmac_key=b"k")
    base = AuditRecord(id="0" * 32, timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                       action="READ", user_id="u")
    salts = []
    for size in (1, 7, 30, 64, 3):  # across refills, and one batch larger than the pool
        batch = [PreparedRecord(*normalise(base._replace(id=f"{len(salts) + i:032x}")))
                 for i in range(size)]
        salts += [p.pii_salt for p in sealer(batch)]
    assert len(salts) == 105 and len(set(salts)) == 105
    assert all(s is not None and len(s) == 32 for s in salts)
    assert draws == [640, 1024, 640]  # drawn in bulk, not per batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must draw its own: the parent's pool holds unused salts
        child = sealer([PreparedRecord(*normalise(base._replace(id="f" * 32)))])[0].pii_salt
        os.write(write, (child or "").encode())
        os._exit(0)
    os.close(write)
    child_salt = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent_next = sealer([PreparedRecord(*normalise(base._replace(id="e" * 32)))])[0].pii_salt
    assert len(child_salt) == 32 and child_salt != parent_next and child_salt not in salts


def test_sealer_keeps_an_existing_seal() -> None:
    sealer = ChainSealer(service_name="svc", hmac_key=b"k")
    record = AuditRecord("a" * 32, dt.datetime.now(dt.UTC), "READ", "u")
    first = sealer([PreparedRecord(*normalise(record))])[0]
    assert first.seq == 1
    again = sealer([first])[0]
    assert again is first  # a retried or spooled record keeps its position and hash
    second = sealer([PreparedRecord(*normalise(record._replace(id="b" * 32)))])[0]
    assert (second.seq, second.prev_hash) == (2, first.hash)


def test_failed_async_write_is_retried_with_the_same_seal(make_trail: Factory) -> None:
    exporter = InMemoryAuditExporter()
    exporter.fail_next()  # the first export fails; the batch is retried as it was sealed
    trail = make_trail(hmac_key=KEY, retry_max_backoff=0.01, exporter=exporter)
    write_records(trail, 10)
    assert trail.flush(10)
    assert len(exporter.calls) >= 2
    kept = exporter.prepared
    assert {p.stream for p in kept} == {trail.chain.stream}
    assert [p.seq for p in kept] == list(range(1, 11))  # no position spent twice
    assert [p.prev_hash for p in kept[1:]] == [p.hash for p in kept[:-1]]


def test_failed_sync_write_leaves_a_reported_gap(
        make_trail: Factory, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # documented outcome: the sealed record never landed; verify names the missing seq
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 3)
    real = StoreWriter.write

    def down(self: StoreWriter, batch: Any, **options: Any) -> None:
        raise StoreError("store down", transient=False)

    monkeypatch.setattr(StoreWriter, "write", down)
    with pytest.raises(AuditWriteError):
        trail.record("DELETE", user_id="u")
    monkeypatch.setattr(StoreWriter, "write", real)
    write_records(trail, 2, start=3)
    report = verify(engine)
    assert [(f.kind, f.seq) for f in report.findings] == [("deleted", 4)]
    assert "never committed" in report.findings[0].detail


def test_named_stream_resumes_after_restart(make_trail: Factory, engine: Engine) -> None:
    first = make_trail(hmac_key=KEY, chain_stream="billing-1", mode="sync")
    write_records(first, 4)
    first.shutdown()
    second = make_trail(hmac_key=KEY, chain_stream="billing-1", mode="sync")
    write_records(second, 3, start=4)
    assert _streams(engine) == {"billing-1": list(range(1, 8))}
    assert verify(engine).ok


def test_each_process_gets_its_own_stream(make_trail: Factory, engine: Engine) -> None:
    a = make_trail(hmac_key=KEY, mode="sync")
    b = make_trail(hmac_key=KEY, mode="sync")
    write_records(a, 3)
    write_records(b, 3)
    assert a.chain.stream != b.chain.stream
    assert a.chain.stream.startswith("unknown_service@")
    assert set(_streams(engine)) == {a.chain.stream, b.chain.stream}
    assert verify(engine).ok


def test_periodic_checkpoints(make_trail: Factory, engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync", checkpoint_every=5)
    write_records(trail, 12)
    with engine.connect() as conn:
        seqs = conn.execute(text("SELECT seq FROM audit_checkpoints ORDER BY seq")).scalars()
        assert list(seqs) == [5, 10]
    execute(engine, "DELETE FROM audit_trails WHERE seq > 8")
    assert kinds(verify(engine)) == {"truncated"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_writes_its_own_stream(make_trail: Factory, engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 2)
    parent_stream = trail.chain.stream
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            write_records(trail, 3, start=100)
            trail.shutdown(5)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    write_records(trail, 2, start=2)
    streams = _streams(engine)
    assert streams[parent_stream] == [1, 2, 3, 4]
    (child,) = set(streams) - {parent_stream}
    assert streams[child] == [1, 2, 3]
    assert verify(engine).ok


def _child_writer(url: str, n: int) -> None:
    trail = AuditTrail(url, hmac_key=KEY, flush_interval=0.01)
    write_records(trail, n)
    trail.shutdown(10)


def test_several_writer_processes_verify(store_url: str, make_trail: Factory,
                                         engine: Engine) -> None:
    make_trail(hmac_key=KEY).flush()  # schema in place before the children start
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_child_writer, args=(store_url, 25)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    streams = _streams(engine)
    assert len(streams) == 3
    assert all(seqs == list(range(1, 26)) for seqs in streams.values())
    report = verify(engine)
    assert report.ok, report.findings
    assert report.records == 75


def test_outbox_records_are_chained(make_trail: Factory, engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY)
    if "session" not in inspect.signature(trail.record).parameters:
        pytest.skip("this build has no transactional outbox")
    from sqlalchemy.orm import Session

    write_records(trail, 2)
    trail.flush()
    with Session(engine) as session, session.begin():
        trail.record("CREATE", user_id="u-outbox", resource_id="inv-1", session=session)
    write_records(trail, 2, start=2)
    trail.flush()
    assert _streams(engine)[trail.chain.stream] == [1, 2, 3, 4, 5]
    assert verify(engine).ok
