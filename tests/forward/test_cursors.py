"""Cursors: order per stream across a gap that is filled later, a gap skipped after its
grace period (recorded), noted duplicates passed, the lease, and SIGTERM mid-batch."""

from __future__ import annotations

import datetime as dt
import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from forward_helpers import FORWARD_COMMAND, engine_of, rows
from sqlalchemy import delete, insert, select

from otel_audit.forward import CursorStore, Forwarder, ForwardItem, LeaseLostError
from otel_audit.forward.reader import read_after, stream_heads
from otel_audit.store.schema import (
    audit_duplicates,
    audit_forward_cursors,
    audit_forward_rejects,
    audit_trails,
)


class Recorder:
    """A destination that keeps what it acknowledged."""

    name = "recorder"

    def __init__(self) -> None:
        self.items: list[ForwardItem] = []

    def send(self, items: Sequence[ForwardItem]) -> None:
        self.items.extend(items)

    def close(self) -> None:
        pass


def _take_row(url: str, seq: int) -> tuple[str, dict[str, Any]]:
    """Remove position ``seq`` of the first stream (as if its batch waited in a spool)."""
    engine = engine_of(url)
    try:
        with engine.begin() as conn:
            stream = conn.execute(select(audit_trails.c.stream).order_by(
                audit_trails.c.stream).limit(1)).scalar_one()
            row = dict(conn.execute(select(audit_trails).where(
                audit_trails.c.stream == stream, audit_trails.c.seq == seq)).mappings().one())
            conn.execute(delete(audit_trails).where(audit_trails.c.id == row["id"]))
        return stream, row
    finally:
        engine.dispose()


def _in_order(items: list[ForwardItem]) -> bool:
    by_stream: dict[str, list[int]] = {}
    for item in items:
        by_stream.setdefault(item.stream, []).append(item.seq)
    return all(seqs == sorted(seqs) for seqs in by_stream.values())


def test_a_gap_filled_later_is_waited_for(source: str) -> None:
    stream, row = _take_row(source, 10)
    engine = engine_of(source)
    recorder = Recorder()
    try:
        summary = Forwarder(engine, recorder, batch_size=4).run(once=True)
        assert summary.gaps == {stream: 10}
        assert max(i.seq for i in recorder.items if i.stream == stream) == 9
        with engine.begin() as conn:  # the spooled batch commits
            conn.execute(insert(audit_trails), [row])
        Forwarder(engine, recorder, batch_size=4).run(once=True)
    finally:
        engine.dispose()
    assert sorted(i.record.id for i in recorder.items) == sorted(rows(source))
    assert _in_order(recorder.items)


def test_a_gap_past_its_grace_is_skipped_and_recorded(source: str) -> None:
    stream, row = _take_row(source, 5)
    engine = engine_of(source)
    recorder = Recorder()
    try:
        forwarder = Forwarder(engine, recorder, batch_size=50, gap_grace=0)
        forwarder.run(once=True)
        with engine.connect() as conn:
            (reject,) = conn.execute(select(audit_forward_rejects)).mappings().all()
    finally:
        engine.dispose()
    assert (reject["stream"], reject["seq"], reject["record_id"]) == (stream, 5, "-")
    assert "positions 5..5" in reject["reason"]
    assert sorted(i.record.id for i in recorder.items) == sorted(rows(source))
    assert row["id"] not in {i.record.id for i in recorder.items}


def test_a_noted_duplicate_position_is_passed(source: str) -> None:
    stream, row = _take_row(source, 7)
    engine = engine_of(source)
    recorder = Recorder()
    try:
        with engine.begin() as conn:
            conn.execute(insert(audit_duplicates).values(
                stream=stream, seq=7, id="x" * 32, prev_hash=row["prev_hash"],
                hash=row["hash"], schema_version=2, pii='{"d":"0"}',
                created_at=dt.datetime.now(dt.UTC)))
        summary = Forwarder(engine, recorder, batch_size=3).run(once=True)
        with engine.connect() as conn:
            rejected = conn.execute(select(audit_forward_rejects)).all()
    finally:
        engine.dispose()
    assert summary.gaps == {} and rejected == []
    assert sorted(i.record.id for i in recorder.items) == sorted(rows(source))


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 100])
def test_reads_across_noted_duplicates_in_any_batch_size(source: str, limit: int) -> None:
    """Each read covers at most ``limit`` positions: noted duplicates inside that range
    make the batch shorter, never skip a record, and the cursor ends at the head."""
    taken = [_take_row(source, seq) for seq in (3, 4, 9, 10, 11, 12)]
    stream = taken[0][0]
    engine = engine_of(source)
    try:
        with engine.begin() as conn:
            for _, row in taken:
                conn.execute(insert(audit_duplicates).values(
                    stream=stream, seq=row["seq"], id="x" * 32, prev_hash=row["prev_hash"],
                    hash=row["hash"], schema_version=2, pii='{"d":"0"}',
                    created_at=dt.datetime.now(dt.UTC)))
        with engine.connect() as conn:
            head = stream_heads(conn)[stream]
            expected = [int(seq) for (seq,) in conn.execute(
                select(audit_trails.c.seq).where(audit_trails.c.stream == stream)
                .order_by(audit_trails.c.seq))]
            got: list[int] = []
            position = 0
            while position < head:
                batch = read_after(conn, stream, position, limit)
                assert batch.gap is None and len(batch.items) <= limit
                assert all(item.seq <= position + limit for item in batch.items)
                assert batch.end > position
                got.extend(item.seq for item in batch.items)
                position = batch.end
    finally:
        engine.dispose()
    assert got == expected and position == head


def test_one_lease_per_destination(source: str) -> None:
    engine = engine_of(source)
    try:
        first = CursorStore(engine, "siem")
        second = CursorStore(engine, "siem")
        other = CursorStore(engine, "archive")
        assert first.try_acquire()
        assert not second.try_acquire()  # the second forwarder waits
        assert other.try_acquire()  # another destination has its own
        first.release()
        assert second.try_acquire()
        try:
            first.advance("s", 3)
        except LeaseLostError:
            pass
        else:
            raise AssertionError("a forwarder without the lease moved a cursor")
        # a holder that was killed on this host is replaced at once
        dead = subprocess.Popen(["true"])
        dead.wait()
        with engine.begin() as conn:
            conn.execute(audit_forward_cursors.update().where(
                audit_forward_cursors.c.destination == "siem",
                audit_forward_cursors.c.stream == "").values(
                holder=f"{second.holder.split(':')[0]}:{dead.pid}:dead"))
        assert first.try_acquire()
    finally:
        engine.dispose()


def test_cursor_moves_keep_one_connection_of_their_own(source: str) -> None:
    """Moves run on a connection kept between them, out of the pool (on PostgreSQL its
    commits do not wait for the WAL flush, and that setting reaches no other session);
    one that was cut is replaced without losing the move; release closes it."""
    engine = engine_of(source)
    try:
        store = CursorStore(engine, "siem")
        assert store.try_acquire()
        store.advance("s", 1)
        kept = store._conn
        assert kept is not None
        store.advance("s", 2, [])
        assert store._conn is kept  # the same connection, no checkout per move
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            assert kept.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
            kept.rollback()
            with engine.connect() as conn:  # the pool's sessions keep the server's setting
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
                pid = kept.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                kept.rollback()
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
            store.advance("s", 3)  # the cut connection is replaced, the move made
            assert store._conn is not kept
        assert store.cursors() == {"s": 3 if postgres else 2}
        store.release()
        assert store._conn is None
        assert CursorStore(engine, "siem").try_acquire()  # the lease was given up
    finally:
        engine.dispose()


def test_sigterm_finishes_the_batch_in_flight(source: str) -> None:
    in_flight = threading.Event()
    release = threading.Event()
    received: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            received.append(1)
            in_flight.set()
            release.wait(60)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dest = f"otlp+http://127.0.0.1:{server.server_address[1]}"
    proc = subprocess.Popen([*FORWARD_COMMAND, "--db", source, "--to", dest,
                             "--batch-size", "10"], stderr=subprocess.PIPE, text=True)
    try:
        assert in_flight.wait(60)
        proc.send_signal(signal.SIGTERM)
        release.set()
        _, err = proc.communicate(timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, err
    assert "sent 10 records in 1 batches" in err
    engine = engine_of(source)
    try:
        with engine.connect() as conn:
            moved = conn.execute(select(audit_forward_cursors.c.seq).where(
                audit_forward_cursors.c.stream != "")).scalars().all()
    finally:
        engine.dispose()
    assert moved == [10] and len(received) == 1


def test_two_forwarders_for_one_destination_send_each_record_once(source: str) -> None:
    engine = engine_of(source)
    first, second = Recorder(), Recorder()
    try:
        forwarders = [Forwarder(engine, destination, batch_size=5, poll_interval=0.01)
                      for destination in (first, second)]
        threads = [threading.Thread(target=f.run, kwargs={"once": True}) for f in forwarders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        engine.dispose()
    sent = [i.record.id for i in first.items + second.items]
    assert sorted(sent) == sorted(rows(source))  # every record, none twice
    assert _in_order(first.items) and _in_order(second.items)


def test_kill_9_resends_at_most_the_unacknowledged_batch(source: str, tmp_path: Any) -> None:
    out = tmp_path / "trail.jsonl"
    rng = random.Random(9)
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen([*FORWARD_COMMAND, "--db", source, "--to", f"file://{out}",
                                 "--batch-size", "3", "--poll-interval", "0.05"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.5))  # a random point of the run, not a sync
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        kills += 1
    subprocess.run([*FORWARD_COMMAND, "--db", source, "--to", f"file://{out}", "--once"],
                   check=True, capture_output=True, timeout=120)
    ids = []
    for line in out.read_text().splitlines():
        try:
            ids.append(json.loads(line)["id"])
        except ValueError:
            continue  # a line torn by the kill; its batch was sent again
    assert set(ids) == set(rows(source))
    assert len(ids) - len(set(ids)) <= kills * 3  # at most one batch per kill


def test_since_starts_new_streams_at_that_time_and_from_start_resends(
        source: str, tmp_path: Any) -> None:
    out = tmp_path / "since.jsonl"
    since = "2026-01-02T03:05:00+00:00"  # records are one second apart from 03:04:05.678901
    subprocess.run([*FORWARD_COMMAND, "--db", source, "--to", f"file://{out}", "--once",
                    "--since", since], check=True, capture_output=True, timeout=120)
    cut = dt.datetime.fromisoformat(since).replace(tzinfo=None)
    expected = {i for i, r in rows(source).items() if r["timestamp"] >= cut}
    got = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert set(got) == expected and len(got) == len(expected) and 0 < len(got) < 120
    subprocess.run([*FORWARD_COMMAND, "--db", source, "--to", f"file://{out}", "--once",
                    "--from-start"], check=True, capture_output=True, timeout=120)
    again = [json.loads(line)["id"] for line in out.read_text().splitlines()][len(got):]
    assert sorted(again) == sorted(rows(source))
