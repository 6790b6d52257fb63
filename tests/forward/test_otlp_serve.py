"""Forwarding trail A to an ``otel-audit serve`` of trail B over OTLP/HTTP."""

from __future__ import annotations

import inspect
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from forward_helpers import FORWARD_COMMAND, engine_of, fill, forward_cli, rows

from otel_audit import AuditTrail
from otel_audit.exporters import ExportStatus
from otel_audit.forward import Forwarder, parse_destination
from otel_audit.forward.otlp import OtlpAuditExporter
from otel_audit.forward.status import health
from otel_audit.prepared import PreparedRecord


def test_b_ends_with_exactly_a_records(source: str, receiver: Callable[..., Any],
                                       receiver_url: str) -> None:
    with receiver() as base:
        forward_cli("--db", source, "--to", base.replace("http://", "otlp+http://"),
                    "--once", "--batch-size", "32")
        sent = rows(source)
        assert len(sent) == 120
        assert rows(receiver_url) == sent
        # a second run finds nothing new: the cursors hold
        again = forward_cli("--db", source, "--to", base.replace("http://", "otlp+http://"),
                            "--once")
        assert "sent 0 records" in again.stderr
    engine = engine_of(source)
    try:
        (state,) = health(engine)
        assert state.lag_records == 0 and state.last_success is not None
    finally:
        engine.dispose()


def test_kill_9_five_times_still_exact(source: str, make_trail: Callable[..., AuditTrail],
                                       receiver: Callable[..., Any],
                                       receiver_url: str) -> None:
    writer = make_trail(service_name="billing")
    fill(writer, 300, start=5000)  # 420 records in all, on three streams
    rng = random.Random(16)
    with receiver() as base:
        dest = base.replace("http://", "otlp+http://")
        for _ in range(5):
            proc = subprocess.Popen([*FORWARD_COMMAND, "--db", source, "--to", dest,
                                     "--batch-size", "7", "--poll-interval", "0.05"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.5, 2.5))  # a random point of the run, not a sync
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        forward_cli("--db", source, "--to", dest, "--once")
        sent = rows(source)
        assert len(sent) == 420
        assert rows(receiver_url) == sent


def test_destination_down_then_up(source: str, receiver: Callable[..., Any],
                                  receiver_url: str) -> None:
    with receiver() as base:
        port = int(base.rsplit(":", 1)[1])
    engine = engine_of(source)
    destination = parse_destination(f"otlp+http://127.0.0.1:{port}", timeout=5)
    forwarder = Forwarder(engine, destination, batch_size=25, backoff_base=0.05,
                          backoff_max=0.2)
    failures: list[int] = []

    def run() -> None:
        forwarder.run(once=True)

    thread = threading.Thread(target=run)
    original_note = forwarder.store.note_error
    down = threading.Event()

    def note_error(message: str) -> None:
        failures.append(1)
        if len(failures) >= 3:
            down.set()  # several retries failed against the stopped server
        original_note(message)

    forwarder.store.note_error = note_error  # type: ignore[method-assign]
    thread.start()
    try:
        assert down.wait(60)
        with receiver(port=port):
            thread.join(120)
            assert not thread.is_alive()
    finally:
        forwarder.stop()
        thread.join(10)
        engine.dispose()
    sent = rows(source)
    assert rows(receiver_url) == sent
    assert len(failures) >= 3


def test_export_answers_the_contract(receiver: Callable[..., Any], receiver_url: str,
                                     tmp_path: Any) -> None:
    trail = AuditTrail(f"sqlite:///{tmp_path}/a.db", auto_migrate=True)
    try:
        batch = [PreparedRecord(trail.build_record("LOGIN", user_id=f"u{i}"), {})
                 for i in range(3)]
    finally:
        trail.shutdown(5)
    with receiver() as base:
        exporter = OtlpAuditExporter(base, timeout=10)
        assert exporter.export(batch).ok
        assert exporter.force_flush() is True
        assert exporter.shutdown() is True
        assert exporter.export(batch).status is ExportStatus.RETRYABLE
    refused = OtlpAuditExporter(f"http://127.0.0.1:{_closed_port()}", timeout=2)
    assert refused.export(batch).status is ExportStatus.RETRYABLE  # nobody listening
    assert sorted(rows(receiver_url)) == sorted(p.record.id for p in batch)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif("exporter" not in inspect.signature(AuditTrail).parameters,
                    reason="AuditTrail(exporter=...) is not in this tree yet")
def test_a_trail_sends_to_otlp_in_process(receiver: Callable[..., Any], receiver_url: str,
                                          tmp_path: Any) -> None:
    with receiver() as base:
        exporter = OtlpAuditExporter(base, timeout=10)
        trail = AuditTrail(f"sqlite:///{tmp_path}/a.db", exporter=exporter,
                           service_name="web", flush_interval=0.05)
        try:
            for i in range(5):
                trail.record("LOGIN", user_id=f"u{i}", request_id=f"r{i}",
                             new_values={"n": i})
            assert trail.flush(30)
        finally:
            trail.shutdown(10)
        assert exporter.export([]).status is ExportStatus.RETRYABLE  # after shutdown
    stored = rows(receiver_url)
    assert len(stored) == 5
    assert sorted((r["user_id"], r["request_id"], r["new_values"]["n"], r["service_name"])
                  for r in stored.values()) == [(f"u{i}", f"r{i}", i, "web") for i in range(5)]


def test_parallel_batches_are_exact_and_move_the_cursor_once_all_are_acked(
        source: str, receiver: Callable[..., Any], receiver_url: str) -> None:
    engine = engine_of(source)
    try:
        with receiver() as base:
            destination = parse_destination(base.replace("http://", "otlp+http://"))
            summary = Forwarder(engine, destination, batch_size=9, parallel=4).run(once=True)
            destination.close()
        (state,) = health(engine)
    finally:
        engine.dispose()
    assert summary.sent == 120 and summary.batches == 14  # 70 + 50 records, 9 a batch
    assert rows(receiver_url) == rows(source)
    assert state.lag_records == 0
