"""``AuditLogHandler``: log calls with ``extra={"audit": ...}`` become audit records."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import threading
from collections.abc import Callable, Iterator

import pytest
from otel_capture_helpers import SAMPLERS, Tracing, hex_ids

import otel_audit
from otel_audit import AuditLogHandler, AuditTrail
from otel_audit.testing import InMemoryAuditExporter


@pytest.fixture
def app_logger(trail: AuditTrail) -> Iterator[logging.Logger]:
    """A logger with an AuditLogHandler writing to ``trail``."""
    logger = logging.getLogger("tests.app")
    handler = AuditLogHandler(trail=trail)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger
    logger.removeHandler(handler)
    logger.propagate = True


def test_audit_extra_becomes_a_record(trail: AuditTrail, app_logger: logging.Logger) -> None:
    app_logger.warning(
        "tool %s deleted", "t-1",
        extra={"audit": {"action": "DELETE", "resource_type": "tool", "resource_id": "t-1",
                         "user_id": "alice", "old_values": {"name": "scraper"},
                         "details": {"reason": "cleanup"}}},
    )
    (rec,) = trail.records()
    assert (rec.action, rec.resource_type, rec.resource_id, rec.user_id) == (
        "DELETE", "tool", "t-1", "alice")
    assert rec.old_values == {"name": "scraper"}
    assert rec.success is True
    assert rec.context == {"message": "tool t-1 deleted", "logger": "tests.app",
                           "level": "WARNING", "details": {"reason": "cleanup"}}


def test_records_without_audit_key_are_ignored(trail: AuditTrail,
                                               app_logger: logging.Logger) -> None:
    app_logger.info("plain message")
    app_logger.info("other extra", extra={"user": "bob"})
    assert trail.records() == []
    assert trail.stats().enqueued == 0


def test_exc_info_marks_failure_unless_audit_says_otherwise(
    trail: AuditTrail, app_logger: logging.Logger
) -> None:
    try:
        raise PermissionError("not yours")
    except PermissionError:
        app_logger.exception("denied", extra={"audit": {"action": "DELETE", "user_id": "u1"}})
        app_logger.exception("kept", extra={"audit": {"action": "READ", "user_id": "u2",
                                                      "success": True}})
    by_user = {r.user_id: r for r in trail.records()}
    assert by_user["u1"].success is False
    assert by_user["u1"].error_message == "PermissionError: not yours"
    assert by_user["u1"].context["level"] == "ERROR"
    assert by_user["u2"].success is True


def test_trace_ids_from_the_logging_span(trail: AuditTrail, app_logger: logging.Logger,
                                         tracing: Tracing) -> None:
    with tracing.tracer.start_as_current_span("request") as span:
        app_logger.info("x", extra={"audit": {"action": "UPDATE", "user_id": "a"}})
    (rec,) = trail.records()
    assert (rec.trace_id, rec.span_id) == hex_ids(span)
    assert rec.correlation_id == rec.trace_id
    # the span points back at the audit row
    (exported,) = tracing.exporter.get_finished_spans()
    links = [e.attributes["audit.record_id"] for e in exported.events if e.name == "audit"]
    assert links == [rec.id]


@pytest.mark.parametrize("decision", list(SAMPLERS))
def test_trace_ids_kept_whatever_the_sampling_decision(
    decision: str, trail: AuditTrail, app_logger: logging.Logger,
    make_tracing: Callable[..., Tracing],
) -> None:
    tracing = make_tracing(SAMPLERS[decision])
    with tracing.tracer.start_as_current_span("request") as span:
        assert span.get_span_context().is_valid
        app_logger.info("x", extra={"audit": {"action": "UPDATE", "user_id": "log"}})
        trail.record("UPDATE", user_id="direct")
    records = trail.records()
    assert len(records) == 2
    assert {(r.trace_id, r.span_id) for r in records} == {hex_ids(span)}


def test_ids_follow_threads_and_tasks(trail: AuditTrail, app_logger: logging.Logger,
                                      tracing: Tracing) -> None:
    expected: dict[str, tuple[str, str]] = {}

    def in_thread(name: str) -> None:
        with tracing.tracer.start_as_current_span(name) as span:
            expected[name] = hex_ids(span)
            app_logger.info(name, extra={"audit": {"action": "READ", "user_id": name}})

    threads = [threading.Thread(target=in_thread, args=(f"thread-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def task(name: str) -> None:
        with tracing.tracer.start_as_current_span(name) as span:
            expected[name] = hex_ids(span)
            await asyncio.sleep(0)  # interleave the tasks
            app_logger.info(name, extra={"audit": {"action": "READ", "user_id": name}})

    async def main() -> None:
        await asyncio.gather(*(task(f"task-{i}") for i in range(4)))

    asyncio.run(main())
    records = trail.records()
    assert len(records) == 8
    assert {r.user_id: (r.trace_id, r.span_id) for r in records} == expected
    assert len({ids[0] for ids in expected.values()}) == 8


def test_dict_config(trail: AuditTrail) -> None:
    otel_audit.set_trail(trail)
    try:
        logging.config.dictConfig({
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"audit": {"class": "otel_audit.AuditLogHandler", "level": "INFO"}},
            "loggers": {"tests.dictconfig": {"handlers": ["audit"], "level": "INFO",
                                             "propagate": False}},
        })
        logger = logging.getLogger("tests.dictconfig")
        (handler,) = logger.handlers
        assert isinstance(handler, AuditLogHandler)
        logger.info("configured", extra={"audit": {"action": "EXPORT", "user_id": "cfg"}})
        (rec,) = trail.records()
        assert (rec.action, rec.user_id) == ("EXPORT", "cfg")
    finally:
        otel_audit.set_trail(None)
        logging.getLogger("tests.dictconfig").handlers.clear()


def test_library_logs_are_never_captured(trail: AuditTrail) -> None:
    handler = AuditLogHandler(trail=trail)
    lib = logging.getLogger("otel_audit.something")
    lib.addHandler(handler)
    try:
        lib.error("internal", extra={"audit": {"action": "DELETE", "user_id": "x"}})
        from otel_audit._internal import suppress_instrumentation

        app = logging.getLogger("tests.suppressed")
        app.addHandler(handler)
        with suppress_instrumentation():
            app.error("own work", extra={"audit": {"action": "DELETE", "user_id": "y"}})
        app.removeHandler(handler)
    finally:
        lib.removeHandler(handler)
    assert trail.records() == []


def test_failing_store_with_handler_on_root_does_not_loop(
    make_trail: Callable[..., AuditTrail], monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemoryAuditExporter()
    exporter.fail_all()  # the destination is down
    trail = make_trail(mode="sync", exporter=exporter)
    handler = AuditLogHandler(trail=trail)
    calls = 0
    original = handler.emit

    def counting_emit(record: logging.LogRecord) -> None:
        nonlocal calls
        calls += 1
        original(record)

    monkeypatch.setattr(handler, "emit", counting_emit)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        logging.getLogger("tests.loop").info(
            "x", extra={"audit": {"action": "DELETE", "user_id": "z"}})
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    # the failure was logged by the library (reaching the handler once, ignored), no loop
    assert 1 <= calls <= 2
    assert trail.stats().failed == 1
