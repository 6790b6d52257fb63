"""Traces point back at their audit rows: the ``audit`` span events of ``span_backlink``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from otel_capture_helpers import Tracing, hex_ids

from otel_audit import AuditLogHandler, AuditTrail, _backlink
from otel_audit.errors import ConfigError
from otel_audit.otel import AuditSpanProcessor


def _links(tracing: Tracing) -> dict[str, list[str]]:
    """Span name -> the record IDs of its back-link events, in order."""
    return {span.name: [e.attributes["audit.record_id"] for e in span.events
                        if e.name == "audit" and e.attributes
                        and "audit.record_id" in e.attributes]
            for span in tracing.exporter.get_finished_spans()}


def test_first_links_each_span_once_and_its_ids_find_every_row(
        trail: AuditTrail, tracing: Tracing) -> None:
    assert trail.config.span_backlink == "first"
    with tracing.tracer.start_as_current_span("request") as span:
        made = [trail.record("UPDATE", resource_id=f"r-{i}") for i in range(3)]
    trail.flush()
    ids = [r.id for r in made if r is not None]
    assert _links(tracing) == {"request": [ids[0]]}
    trace_id, span_id = hex_ids(span)
    stored = trail.records(trace_id=trace_id)
    assert sorted(r.id for r in stored) == sorted(ids)
    assert {r.span_id for r in stored} == {span_id}


def test_first_links_every_span_of_a_trace(trail: AuditTrail, tracing: Tracing) -> None:
    tracer = tracing.tracer
    with tracer.start_as_current_span("outer"):
        a = trail.record("READ", user_id="a")
        with tracer.start_as_current_span("inner"):
            b = trail.record("READ", user_id="b")
            trail.record("READ", user_id="b2")
        trail.record("READ", user_id="a2")  # back in outer: already linked
        for name in ("one", "two"):
            with tracer.start_as_current_span(name):
                trail.record("READ", user_id=name)
    assert a is not None and b is not None
    links = _links(tracing)
    assert links["outer"] == [a.id] and links["inner"] == [b.id]
    assert len(links["one"]) == 1 and len(links["two"]) == 1
    assert links["one"] != links["two"]


def test_event_links_every_record(make_trail: Callable[..., AuditTrail],
                                  tracing: Tracing) -> None:
    trail = make_trail(span_backlink="event")
    with tracing.tracer.start_as_current_span("request"):
        made = [trail.record("UPDATE", resource_id=f"r-{i}") for i in range(3)]
    assert _links(tracing) == {"request": [r.id for r in made if r is not None]}


def test_off_adds_no_event_and_rows_keep_the_span(make_trail: Callable[..., AuditTrail],
                                                  tracing: Tracing) -> None:
    trail = make_trail(span_backlink="off")
    with tracing.tracer.start_as_current_span("request") as span:
        trail.record("UPDATE")
    assert _links(tracing) == {"request": []}
    (stored,) = trail.records()
    assert (stored.trace_id, stored.span_id) == hex_ids(span)


def test_setting_from_the_environment_and_a_bad_value(
        make_trail: Callable[..., AuditTrail], tracing: Tracing,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_SPAN_BACKLINK", "event")
    trail = make_trail()
    assert trail.config.span_backlink == "event"
    with pytest.raises(ConfigError, match="span_backlink"):
        make_trail(span_backlink="sometimes")


def test_explicit_ids_of_another_span_neither_link_nor_mark_the_current_one(
        trail: AuditTrail, tracing: Tracing) -> None:
    with tracing.tracer.start_as_current_span("elsewhere") as other:
        pass
    trace_id, span_id = hex_ids(other)
    with tracing.tracer.start_as_current_span("request"):
        trail.record("IMPORT", trace_id=trace_id, span_id=span_id)
        own = trail.record("UPDATE")
    assert own is not None
    assert _links(tracing) == {"elsewhere": [], "request": [own.id]}


def test_a_span_that_is_not_recording_gets_nothing_but_rows_keep_its_ids(
        trail: AuditTrail, make_tracing: Callable[..., Tracing]) -> None:
    tracing = make_tracing(ALWAYS_OFF)
    with tracing.tracer.start_as_current_span("unsampled") as span:
        trail.record("READ")
        trail.record("READ")
    assert tracing.exporter.get_finished_spans() == ()
    assert {(r.trace_id, r.span_id) for r in trail.records()} == {hex_ids(span)}


def test_threads_link_their_own_spans(trail: AuditTrail, tracing: Tracing) -> None:
    start = threading.Barrier(4)

    def work(name: str) -> None:
        start.wait()
        with tracing.tracer.start_as_current_span(name):
            for _ in range(50):
                trail.record("READ", user_id=name)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trail.flush()
    links = _links(tracing)
    by_user: dict[str, set[str]] = {}
    for rec in trail.records(limit=1000):
        assert rec.user_id is not None
        by_user.setdefault(rec.user_id, set()).add(rec.id)
    for name, linked in links.items():
        # at least one event (two threads racing on one span could add a second)
        assert linked and set(linked) <= by_user[name]


def test_logging_handler_links_like_record(trail: AuditTrail, tracing: Tracing) -> None:
    logger = logging.getLogger("tests.backlink")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = AuditLogHandler(trail=trail)
    logger.addHandler(handler)
    try:
        with tracing.tracer.start_as_current_span("request"):
            for i in range(3):
                logger.info("read %s", i, extra={"audit": {"action": "READ"}})
    finally:
        logger.removeHandler(handler)
    trail.flush()
    stored = trail.records()
    assert len(stored) == 3
    (linked,) = _links(tracing)["request"]
    assert linked == min(r.id for r in stored)  # UUIDv7: the first record's ID


def test_span_processor_never_records_the_link_again(trail: AuditTrail,
                                                     tracing: Tracing) -> None:
    tracing.provider.add_span_processor(AuditSpanProcessor(trail))
    with tracing.tracer.start_as_current_span("request"):
        first = trail.record("READ")
        trail.record("READ")
    trail.flush()
    assert first is not None
    assert _links(tracing) == {"request": [first.id]}
    assert len(trail.records()) == 2


def test_a_full_table_is_cleared_and_costs_at_most_one_more_event(
        trail: AuditTrail, tracing: Tracing, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backlink, "_LINKED_MAX", 2)
    tracer = tracing.tracer
    with tracer.start_as_current_span("long") as long_span:
        first = trail.record("READ")
        for name in ("a", "b"):  # the table fills up and is cleared
            with tracer.start_as_current_span(name):
                trail.record("READ")
        again = trail.record("READ")
        trail.record("READ")  # remembered again: no third event
    assert first is not None and again is not None
    assert _links(tracing)["long"] == [first.id, again.id]
    assert len(trail.records(trace_id=hex_ids(long_span)[0])) == 5
