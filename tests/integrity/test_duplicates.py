"""Idempotent duplicates: a record submitted again is stored once, counted once, and
``verify`` reports nothing (in one batch, two batches, two trails, after a restart, and
an OTLP body posted twice to ``otel-audit serve``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from integrity_support import BASE, KEY, execute, verify
from sqlalchemy import Engine, func, select

from otel_audit import AuditRecord, AuditTrail
from otel_audit.server import IngestApp, serve_in_thread
from otel_audit.store.schema import audit_duplicates, audit_trails


def _count(engine: Engine, table: Any = audit_trails) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def _record(trail: AuditTrail, i: int, **fields: Any) -> AuditRecord:
    record = trail.build_record("UPDATE", user_id=f"user-{i}", user_email="u@example.com",
                                resource_type="invoice", resource_id=f"inv-{i}",
                                new_values={"amount": 12345678901234567, "rate": 1e-7},
                                context={"email": "u@example.com"},
                                timestamp=BASE + dt.timedelta(seconds=i), **fields)
    return record._replace(id=f"client-{i}")  # an ID of the client's, stable across retries


def _clean(engine: Engine, stored: int) -> None:
    report = verify(engine)
    assert report.ok, report.findings
    assert _count(engine) == stored


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_same_record_twice_in_one_batch(make_trail: Callable[..., AuditTrail], engine: Engine,
                                        mode: str) -> None:
    trail = make_trail(hmac_key=KEY, mode=mode, personal_keys=["email"])
    records = [_record(trail, i) for i in range(3)]
    if mode == "sync":
        trail.pipeline.write_now([*records, records[1], records[1]])
    else:
        for record in [*records, records[1], records[1]]:
            trail.submit(record)
        assert trail.flush(10)
    _clean(engine, 3)
    stats = trail.stats()
    assert stats.written == 3 and stats.duplicates == 2


def test_same_record_in_two_batches(make_trail: Callable[..., AuditTrail],
                                    engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY)
    records = [_record(trail, i) for i in range(5)]
    for record in records:
        trail.submit(record)
    assert trail.flush(10)
    for record in records[1:3]:  # the client's retry after a lost acknowledgement
        trail.submit(record)
    trail.record("READ", user_id="after")  # the chain goes on after the duplicates
    assert trail.flush(10)
    _clean(engine, 6)
    assert trail.stats().written == 6 and trail.stats().duplicates == 2
    assert _count(engine, audit_duplicates) == 2


def test_same_record_from_two_trails_and_after_a_restart(
        make_trail: Callable[..., AuditTrail], engine: Engine) -> None:
    first = make_trail(hmac_key=KEY, mode="sync")
    records = [_record(first, i) for i in range(4)]
    for record in records:
        first.submit(record)
    second = make_trail(hmac_key=KEY, mode="sync")  # another process, another stream
    for record in records[:2]:
        second.submit(record)
    second.record("READ", user_id="second")
    first.shutdown(5)
    restarted = make_trail(hmac_key=KEY, mode="sync", chain_stream=None)
    for record in records:
        restarted.submit(record)
    _clean(engine, 5)
    assert second.stats().duplicates == 2 and restarted.stats().duplicates == 4
    assert restarted.stats().written == 0


def test_named_stream_resumes_after_noted_duplicates(make_trail: Callable[..., AuditTrail],
                                                     engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync", chain_stream="billing")
    record = _record(trail, 1)
    trail.submit(record)
    trail.submit(record)  # seq 2 is the duplicate: the head is at 2
    trail.shutdown(5)
    again = make_trail(hmac_key=KEY, mode="sync", chain_stream="billing")
    again.record("READ", user_id="next")
    _clean(engine, 2)


def test_a_forged_duplicate_note_is_reported(make_trail: Callable[..., AuditTrail],
                                             engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    record = _record(trail, 1)
    trail.submit(record)
    trail.submit(record)
    trail.record("READ", user_id="next")
    assert verify(engine).ok
    # the note stands only for the stored record it names: changing that record is seen
    execute(engine, "UPDATE audit_trails SET action = 'DELETE' WHERE id = :id", id=record.id)
    findings = verify(engine).findings
    assert {(f.kind, f.seq) for f in findings} >= {("modified", 1), ("modified", 2)}


def test_a_deleted_duplicate_note_is_a_gap(make_trail: Callable[..., AuditTrail],
                                           engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    record = _record(trail, 1)
    trail.submit(record)
    trail.submit(record)
    trail.record("READ", user_id="next")
    execute(engine, "DELETE FROM audit_duplicates")
    assert [(f.kind, f.seq) for f in verify(engine).findings] == [("deleted", 2)]


def _otlp_document(n: int) -> dict[str, Any]:
    logs = [{"timeUnixNano": str(1_700_000_000_000_000_000 + i * 1000), "eventName": "audit",
             "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "attributes": [{"key": "audit.action", "value": {"stringValue": "UPDATE"}},
                            {"key": "user.id", "value": {"stringValue": f"user-{i}"}},
                            {"key": "audit.resource.id", "value": {"stringValue": f"inv-{i}"}}]}
            for i in range(n)]
    return {"resourceLogs": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "billing"}}]},
        "scopeLogs": [{"scope": {"name": "tests"}, "logRecords": logs}]}]}


@pytest.mark.parametrize("ack_mode", ["sync", "durable"])
def test_otlp_body_posted_twice(make_trail: Callable[..., AuditTrail], engine: Engine,
                                ack_mode: str) -> None:
    trail = make_trail(service_name="ingest", hmac_key=KEY)
    app = IngestApp(trail, ack_mode=ack_mode)
    document = _otlp_document(7)
    with serve_in_thread(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as c:
        for _ in range(2):  # the response was lost: the sender posts the same body again
            assert c.post("/v1/logs", json=document).status_code == 200
    assert trail.flush(10)
    _clean(engine, 7)
    assert trail.stats().written == 7 and trail.stats().duplicates == 7


def test_parallel_verify_reads_noted_duplicates(make_trail: Callable[..., AuditTrail],
                                                engine: Engine) -> None:
    """A stream whose first and last positions are noted duplicates (a restarted writer
    that only received retries), verified by worker processes."""
    first = make_trail(hmac_key=KEY, mode="sync", checkpoint_every=1)
    records = [_record(first, i) for i in range(3)]
    for record in records:
        first.submit(record)
    retried = make_trail(hmac_key=KEY, mode="sync", checkpoint_every=1)
    for record in records:
        retried.submit(record)
    report = verify(engine, workers=2)
    assert report.ok, report.findings
    assert report.streams == 2
