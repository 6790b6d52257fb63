"""``AuditContextFilter``: audit log records keep the caller's context behind a QueueHandler."""

from __future__ import annotations

import datetime as dt
import logging
import logging.config
import pickle
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from logging.handlers import QueueHandler, QueueListener
from typing import Any

import pytest
from otel_capture_helpers import Tracing, hex_ids

import otel_audit
from otel_audit import (
    AuditContextFilter,
    AuditLogHandler,
    AuditTrail,
    RequestContext,
    correlation_scope,
    request_scope,
)
from otel_audit.integrations import log_context
from otel_audit.integrations.log_context import CALL_CONTEXT_ATTR, CallContext, call_context

REQUEST = RequestContext(client_ip="203.0.113.7", user_agent="curl/8", request_path="/tools/7",
                         request_method="DELETE", request_id="req-1", user_id="alice",
                         team_id="team-a")


class _Listener(QueueListener):
    """A QueueListener that knows whether it runs (stop() drains the queue first)."""

    running = False

    def start(self) -> None:
        super().start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            super().stop()


class _HandlerInsideASpan(AuditLogHandler):
    """An audit handler that works inside a span of the listener's own."""

    def __init__(self, trail: AuditTrail, tracing: Tracing) -> None:
        super().__init__(trail=trail)
        self.tracing = tracing

    def handle(self, record: logging.LogRecord) -> bool:
        with self.tracing.tracer.start_as_current_span("listener-side"):
            return super().handle(record)


@contextmanager
def queued_logger(trail: AuditTrail, name: str, *, stamp: bool = True, start: bool = True,
                  handler: AuditLogHandler | None = None,
                  ) -> Iterator[tuple[logging.Logger, _Listener]]:
    """A logger whose records go through a QueueHandler to an AuditLogHandler on the
    listener's thread (the filter on the QueueHandler unless ``stamp`` is false)."""
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    to_queue = QueueHandler(q)
    if stamp:
        to_queue.addFilter(AuditContextFilter())
    listener = _Listener(q, handler or AuditLogHandler(trail=trail))
    logger = logging.getLogger(name)
    logger.addHandler(to_queue)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if start:
        listener.start()
    try:
        yield logger, listener
    finally:
        listener.stop()
        logger.removeHandler(to_queue)
        logger.propagate = True


def _listener_threads(seen: list[str]) -> Callable[[logging.LogRecord], bool]:
    def remember(record: logging.LogRecord) -> bool:
        seen.append(threading.current_thread().name)
        return True
    return remember


def test_queue_listener_records_the_callers_span_and_request(
        trail: AuditTrail, tracing: Tracing) -> None:
    with queued_logger(trail, "tests.queued") as (logger, _listener), \
            tracing.tracer.start_as_current_span("delete-tool") as span, \
            request_scope(REQUEST):
        before = dt.datetime.now(dt.UTC)
        logger.warning("tool %s deleted", "t-7", extra={"audit": {
            "action": "DELETE", "resource_type": "tool", "resource_id": "t-7"}})
        called_at = dt.datetime.now(dt.UTC)
    (rec,) = trail.records()
    assert (rec.trace_id, rec.span_id) == hex_ids(span)
    assert rec.correlation_id == rec.trace_id
    assert (rec.client_ip, rec.user_agent, rec.request_path, rec.request_method,
            rec.request_id, rec.user_id, rec.team_id) == (
        "203.0.113.7", "curl/8", "/tools/7", "DELETE", "req-1", "alice", "team-a")
    # the call's time, not the listener's (datetime.now() truncates to the microsecond,
    # the record's float time is rounded: one microsecond of slack above)
    assert before <= rec.timestamp <= called_at + dt.timedelta(microseconds=1)
    assert rec.context["message"] == "tool t-7 deleted"
    # the span points at the stored row: linked at the call, on the caller's thread
    (exported,) = tracing.exporter.get_finished_spans()
    assert [e.attributes["audit.record_id"] for e in exported.events
            if e.name == "audit"] == [rec.id]


def test_without_the_filter_the_listener_thread_loses_the_context(
        trail: AuditTrail, tracing: Tracing) -> None:
    # what the filter is for: the handler alone sees the listener's empty context
    with queued_logger(trail, "tests.unstamped", stamp=False) as (logger, _listener), \
            tracing.tracer.start_as_current_span("request"), request_scope(REQUEST):
        logger.info("x", extra={"audit": {"action": "READ"}})
    (rec,) = trail.records()
    assert rec.trace_id is None
    assert rec.client_ip is None and rec.user_id != "alice"


def test_audit_dict_values_win_over_the_request(trail: AuditTrail) -> None:
    with queued_logger(trail, "tests.queued.override") as (logger, _listener), \
            request_scope(REQUEST):
        logger.info("x", extra={"audit": {"action": "READ", "user_id": "bob"}})
    (rec,) = trail.records()
    assert (rec.user_id, rec.client_ip) == ("bob", "203.0.113.7")


def test_correlation_scope_without_a_span_and_no_listener_span_stands_in(
        trail: AuditTrail, tracing: Tracing) -> None:
    # the listener works inside a span of its own: it must not become the record's
    with queued_logger(trail, "tests.queued.corr",
                       handler=_HandlerInsideASpan(trail, tracing)) as (logger, _listener), \
            correlation_scope("corr-42"):
        logger.info("x", extra={"audit": {"action": "READ", "user_id": "c"}})
    (rec,) = trail.records()
    assert rec.trace_id is None and rec.span_id is None
    assert rec.correlation_id == "corr-42"
    assert [s.name for s in tracing.exporter.get_finished_spans()] == ["listener-side"]


def test_exception_and_message_survive_queue_handler_prepare(trail: AuditTrail) -> None:
    with queued_logger(trail, "tests.queued.exc") as (logger, _listener):
        try:
            raise PermissionError("not yours")
        except PermissionError:
            logger.exception("denied %s", "t-1", extra={"audit": {"action": "DELETE"}})
    (rec,) = trail.records()
    assert rec.success is False
    assert rec.error_message == "PermissionError: not yours"
    # prepare() appends the traceback to the message; the stamp kept the call's message
    assert rec.context["message"] == "denied t-1"
    assert rec.context["level"] == "ERROR"


def test_the_audit_dict_is_a_snapshot_of_the_call(trail: AuditTrail) -> None:
    with queued_logger(trail, "tests.queued.snapshot", start=False) as (logger, listener):
        new_values = {"name": "before", "tags": ["a"]}
        logger.info("x", extra={"audit": {"action": "UPDATE", "new_values": new_values}})
        new_values["name"] = "after"
        new_values["tags"].append("b")  # type: ignore[attr-defined]
        listener.start()
    (rec,) = trail.records()
    assert rec.new_values == {"name": "before", "tags": ["a"]}


def test_records_run_on_the_listener_thread(trail: AuditTrail, tracing: Tracing) -> None:
    threads: list[str] = []
    with queued_logger(trail, "tests.queued.thread") as (logger, listener):
        for handler in listener.handlers:
            handler.addFilter(_listener_threads(threads))
        with tracing.tracer.start_as_current_span("request") as span:
            logger.info("x", extra={"audit": {"action": "READ"}})
    assert threads and threads[0] != threading.current_thread().name
    (rec,) = trail.records()
    assert rec.trace_id == hex_ids(span)[0]


def test_filter_stamps_only_audit_records_and_never_the_library(tracing: Tracing) -> None:
    flt = AuditContextFilter()

    def make(name: str, **extra: Any) -> logging.LogRecord:
        return logging.makeLogRecord({"name": name, "msg": "m", **extra})

    plain = make("app")
    assert flt.filter(plain) is True and call_context(plain) is None
    own = make("otel_audit.pipeline", audit={"action": "X"})
    assert flt.filter(own) is True and call_context(own) is None
    from otel_audit._internal import suppress_instrumentation

    with suppress_instrumentation():
        busy = make("app", audit={"action": "X"})
        assert flt.filter(busy) is True and call_context(busy) is None
    with tracing.tracer.start_as_current_span("s") as span:
        audited = make("app", audit={"action": "X"})
        assert flt.filter(audited) is True
    stamp = call_context(audited)
    assert stamp is not None and (stamp.trace_id, stamp.span_id) == hex_ids(span)


def test_filter_never_raises_into_the_logging_call(
        trail: AuditTrail, monkeypatch: pytest.MonkeyPatch, tracing: Tracing) -> None:
    def broken() -> object:
        raise RuntimeError("tracing is broken")

    monkeypatch.setattr(log_context, "_get_current_span", broken)
    with queued_logger(trail, "tests.queued.broken") as (logger, _listener), \
            tracing.tracer.start_as_current_span("request"):
        logger.info("kept %s", "anyway", extra={"audit": {"action": "READ", "user_id": "b"}})
    (rec,) = trail.records()  # recorded as without the filter: nothing lost
    assert rec.user_id == "b"
    assert rec.context["message"] == "kept anyway"


def test_bad_format_args_keep_the_template(trail: AuditTrail) -> None:
    # without the filter QueueHandler.prepare() fails to format it and drops the record
    with queued_logger(trail, "tests.queued.badargs") as (logger, _listener):
        logger.info("bad %d", "args", extra={"audit": {"action": "READ"}})
    (rec,) = trail.records()
    assert rec.context["message"] == "bad %d"


def test_stamp_survives_pickling(tracing: Tracing) -> None:
    # a multiprocessing queue pickles the record: the stamp must go with it
    with tracing.tracer.start_as_current_span("s"), request_scope(REQUEST):
        record = logging.makeLogRecord({"name": "app", "msg": "m",
                                        "audit": {"action": "READ"}})
        AuditContextFilter().filter(record)
    copied = pickle.loads(pickle.dumps(record))
    assert isinstance(copied.__dict__[CALL_CONTEXT_ATTR], CallContext)
    assert call_context(copied) == call_context(record)


def _wired_by_hand(trail: AuditTrail, listeners: list[QueueListener]
                   ) -> Callable[[], QueueHandler]:
    def factory() -> QueueHandler:
        q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        listener = QueueListener(q, AuditLogHandler(trail=trail))
        listeners.append(listener)
        listener.start()
        return QueueHandler(q)
    return factory


def test_dict_config_python_311_way(trail: AuditTrail, tracing: Tracing) -> None:
    # Python 3.11's dictConfig cannot build a QueueHandler's listener: a factory does
    listeners: list[QueueListener] = []
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"audit_context": {"()": "otel_audit.AuditContextFilter"}},
        "handlers": {"queue": {"()": _wired_by_hand(trail, listeners),
                               "filters": ["audit_context"]}},
        "loggers": {"tests.dictconfig311": {"handlers": ["queue"], "level": "INFO",
                                            "propagate": False}},
    })
    logger = logging.getLogger("tests.dictconfig311")
    try:
        with tracing.tracer.start_as_current_span("request") as span, request_scope(REQUEST):
            logger.info("configured", extra={"audit": {"action": "EXPORT"}})
        (listener,) = listeners
        listener.stop()
    finally:
        logger.handlers.clear()
    (rec,) = trail.records()
    assert (rec.trace_id, rec.span_id) == hex_ids(span)
    assert (rec.user_id, rec.request_path) == ("alice", "/tools/7")


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="dictConfig builds a QueueHandler's listener from 3.12 on")
def test_dict_config_queue_handler_python_312(trail: AuditTrail, tracing: Tracing) -> None:
    otel_audit.set_trail(trail)
    try:
        logging.config.dictConfig({
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"audit_context": {"()": "otel_audit.AuditContextFilter"}},
            "handlers": {
                "audit": {"class": "otel_audit.AuditLogHandler"},
                "audit_queue": {"class": "logging.handlers.QueueHandler",
                                "handlers": ["audit"], "filters": ["audit_context"]},
            },
            "loggers": {"tests.dictconfig312": {"handlers": ["audit_queue"],
                                                "level": "INFO", "propagate": False}},
        })
        logger = logging.getLogger("tests.dictconfig312")
        handler = logging.getHandlerByName("audit_queue")  # type: ignore[attr-defined]
        assert isinstance(handler, QueueHandler)
        handler.listener.start()  # type: ignore[attr-defined]
        try:
            with tracing.tracer.start_as_current_span("request") as span, \
                    request_scope(REQUEST):
                logger.info("configured", extra={"audit": {"action": "EXPORT"}})
        finally:
            handler.listener.stop()  # type: ignore[attr-defined]
        (rec,) = trail.records()
        assert (rec.trace_id, rec.span_id) == hex_ids(span)
        assert (rec.user_id, rec.request_path) == ("alice", "/tools/7")
    finally:
        otel_audit.set_trail(None)
        logging.getLogger("tests.dictconfig312").handlers.clear()


def test_filter_and_handler_share_a_custom_key(trail: AuditTrail, tracing: Tracing) -> None:
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    to_queue = QueueHandler(q)
    to_queue.addFilter(AuditContextFilter(key="audit_entry"))
    listener = _Listener(q, AuditLogHandler(trail=trail, key="audit_entry"))
    logger = logging.getLogger("tests.queued.key")
    logger.addHandler(to_queue)
    logger.setLevel(logging.INFO)
    listener.start()
    try:
        with tracing.tracer.start_as_current_span("request") as span:
            logger.info("x", extra={"audit": {"action": "IGNORED"},
                                    "audit_entry": {"action": "EXPORT", "user_id": "k"}})
    finally:
        listener.stop()
        logger.removeHandler(to_queue)
    (rec,) = trail.records()
    assert (rec.action, rec.user_id) == ("EXPORT", "k")
    assert (rec.trace_id, rec.span_id) == hex_ids(span)
