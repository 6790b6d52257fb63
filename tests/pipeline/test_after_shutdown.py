"""Records submitted after (or while) the trail shuts down are never left in a queue
no worker will take: each one is written, spooled, or counted as failed and logged."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from otel_audit import AuditTrail
from otel_audit.store.schema import audit_seals


def test_a_record_after_shutdown_is_counted_and_logged(
        make_trail: Callable[..., AuditTrail], caplog: pytest.LogCaptureFixture) -> None:
    trail = make_trail()
    trail.record("READ", user_id="before")
    assert trail.shutdown(10)
    with caplog.at_level(logging.ERROR, logger="otel_audit"):
        trail.record("READ", user_id="after")
    stats = trail.stats()
    assert stats.written == 1
    assert stats.queue_depth == 0  # not left behind in a queue nobody drains
    assert stats.failed + stats.spooled == 1
    assert "submitted after shutdown" in caplog.text
    # one error that says what happened, not a traceback from the closed spool
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None, caplog.text


def test_an_in_memory_trail_shuts_down_quietly_and_keeps_its_records(
        caplog: pytest.LogCaptureFixture) -> None:
    # its one connection is the database: the final seal and the records after
    # shutdown are read from it, never from a new, empty database
    with caplog.at_level(logging.WARNING, logger="otel_audit"):
        trail = AuditTrail("sqlite://")
        trail.record("READ", user_id="kept")
        assert trail.shutdown(10)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert [r.user_id for r in trail.records()] == ["kept"]
    with trail.writer.engine.connect() as conn:  # the final seal went in too
        assert conn.execute(select(func.count()).select_from(audit_seals)).scalar_one() == 1


def test_records_made_while_the_trail_shuts_down_all_accounted_for(
        make_trail: Callable[..., AuditTrail]) -> None:
    trail = make_trail(queue_size=100_000)
    started, errors, made = threading.Event(), [], [0]

    def producer() -> None:
        try:
            for i in range(20_000):
                trail.record("UPDATE", user_id=f"u{i}")
                made[0] += 1
                if i == 200:
                    started.set()
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert started.wait(30)
    trail.shutdown(30)
    thread.join(60)
    assert not errors
    stats = trail.stats()
    assert stats.queue_depth == 0
    assert stats.written + stats.failed + stats.spooled == made[0]
