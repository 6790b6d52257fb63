"""``AuditSpanProcessor`` and ``AuditSampler`` on a real TracerProvider."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Status, StatusCode
from otel_capture_helpers import SAMPLERS, Tracing, hex_ids

from otel_audit import AuditTrail
from otel_audit.otel import AuditSampler, AuditSpanProcessor


@pytest.fixture
def audited(trail: AuditTrail, make_tracing: Callable[..., Tracing]) -> Tracing:
    """An always-sampling provider with the audit processor writing to ``trail``."""
    tracing = make_tracing(SAMPLERS["RECORD_AND_SAMPLE"])
    tracing.provider.add_span_processor(AuditSpanProcessor(trail))
    return tracing


def test_audit_span_becomes_one_record(trail: AuditTrail, audited: Tracing) -> None:
    attrs = {
        "audit.action": "UPDATE",
        "audit.resource.type": "invoice",
        "audit.resource.id": "inv-42",
        "audit.resource.name": "Invoice 42",
        "audit.team.id": "payments",
        "audit.data_classification": "confidential",
        "audit.requires_review": True,
        "audit.old_values": json.dumps({"status": "draft"}),
        "audit.context": json.dumps({"ticket": "T-1"}),
        "user.id": "alice",
        "user.email": "alice@example.com",
        "client.address": "203.0.113.9",
        "user_agent.original": "curl/8",
        "http.request.method": "PATCH",
        "http.route": "/invoices/{id}",
    }
    with audited.tracer.start_as_current_span("patch invoice", attributes=attrs) as span:
        span.set_attribute("audit.new_values", json.dumps({"status": "sent"}))
    (rec,) = trail.records()
    assert (rec.action, rec.resource_type, rec.resource_id, rec.resource_name) == (
        "UPDATE", "invoice", "inv-42", "Invoice 42")
    assert (rec.user_id, rec.user_email, rec.team_id) == ("alice", "alice@example.com",
                                                          "payments")
    assert (rec.client_ip, rec.user_agent, rec.request_method, rec.request_path) == (
        "203.0.113.9", "curl/8", "PATCH", "/invoices/{id}")
    assert rec.old_values == {"status": "draft"}
    assert rec.new_values == {"status": "sent"}
    assert rec.context == {"ticket": "T-1"}
    assert rec.data_classification == "confidential"
    assert rec.requires_review is True
    assert rec.success is True
    assert rec.service_name == "svc-a"  # from the resource
    assert (rec.trace_id, rec.span_id) == hex_ids(span)
    assert rec.correlation_id == rec.trace_id


def test_plain_spans_are_ignored(trail: AuditTrail, audited: Tracing) -> None:
    with audited.tracer.start_as_current_span("plain", attributes={"user.id": "x"}):
        pass
    assert trail.records() == []


def test_enduser_id_fallback_and_url_path_preference(trail: AuditTrail, audited: Tracing) -> None:
    with audited.tracer.start_as_current_span("op", attributes={
        "audit.action": "READ", "enduser.id": "legacy", "url.path": "/a/1",
        "http.route": "/a/{id}"}):
        pass
    (rec,) = trail.records()
    assert (rec.user_id, rec.request_path) == ("legacy", "/a/1")


def test_error_status_and_exception_event(trail: AuditTrail, audited: Tracing) -> None:
    with audited.tracer.start_as_current_span("described", attributes={
            "audit.action": "DELETE", "user.id": "a"}) as span:
        span.set_status(Status(StatusCode.ERROR, "quota exceeded"))
    with pytest.raises(KeyError), audited.tracer.start_as_current_span(
            "raised", attributes={"audit.action": "DELETE", "user.id": "b"}):
        raise KeyError("tool-9")
    with audited.tracer.start_as_current_span("ok", attributes={
            "audit.action": "DELETE", "user.id": "c"}):
        pass
    by_user = {r.user_id: r for r in trail.records()}
    assert (by_user["a"].success, by_user["a"].error_message) == (False, "quota exceeded")
    assert by_user["b"].success is False
    assert by_user["b"].error_message is not None
    assert "KeyError" in by_user["b"].error_message and "tool-9" in by_user["b"].error_message
    assert (by_user["c"].success, by_user["c"].error_message) == (True, None)


def test_audit_events_become_records(trail: AuditTrail, audited: Tracing) -> None:
    with audited.tracer.start_as_current_span("batch export", attributes={
            "user.id": "alice", "client.address": "198.51.100.1"}) as span:
        span.add_event("audit", {"audit.action": "EXPORT", "audit.resource.type": "report",
                                 "audit.resource.id": "r-1"})
        span.add_event("audit", {"audit.action": "EXPORT", "audit.resource.type": "report",
                                 "audit.resource.id": "r-2", "user.id": "bob"})
        span.add_event("something else", {"audit.action": "NOPE"})
    records = sorted(trail.records(), key=lambda r: r.resource_id)
    assert [(r.action, r.resource_id, r.user_id) for r in records] == [
        ("EXPORT", "r-1", "alice"), ("EXPORT", "r-2", "bob")]
    assert all(r.client_ip == "198.51.100.1" for r in records)  # inherited from the span
    assert {(r.trace_id, r.span_id) for r in records} == {hex_ids(span)}


def test_nested_spans_keep_their_own_ids(trail: AuditTrail, audited: Tracing) -> None:
    tracer = audited.tracer
    outer_attrs = {"audit.action": "IMPORT", "user.id": "o"}
    inner_attrs = {"audit.action": "CREATE", "user.id": "i"}
    with tracer.start_as_current_span("outer", attributes=outer_attrs) as outer, \
            tracer.start_as_current_span("inner", attributes=inner_attrs) as inner:
        trail.record("UPDATE", user_id="direct")
    by_user = {r.user_id: r for r in trail.records()}
    assert (by_user["o"].trace_id, by_user["o"].span_id) == hex_ids(outer)
    assert (by_user["i"].trace_id, by_user["i"].span_id) == hex_ids(inner)
    assert (by_user["direct"].trace_id, by_user["direct"].span_id) == hex_ids(inner)
    assert hex_ids(outer)[0] == hex_ids(inner)[0]


def test_back_link_events_are_not_recorded_twice(trail: AuditTrail, audited: Tracing) -> None:
    with audited.tracer.start_as_current_span("op", attributes={"audit.action": "DELETE",
                                                                "user.id": "span"}):
        direct = trail.record("READ", user_id="direct")
    assert direct is not None
    records = trail.records()
    assert sorted(r.user_id for r in records) == ["direct", "span"]
    (exported,) = audited.exporter.get_finished_spans()
    assert [e.attributes["audit.record_id"] for e in exported.events] == [direct.id]


@pytest.mark.parametrize("decision", list(SAMPLERS))
def test_audit_sampler_keeps_audit_spans(decision: str, trail: AuditTrail,
                                         make_tracing: Callable[..., Tracing]) -> None:
    tracing = make_tracing(AuditSampler(SAMPLERS[decision]))
    tracing.provider.add_span_processor(AuditSpanProcessor(trail))
    attrs = {"audit.action": "DELETE", "user.id": "s"}
    with tracing.tracer.start_as_current_span("audited", attributes=attrs) as span, \
            tracing.tracer.start_as_current_span("child"):
        pass
    (rec,) = trail.records()
    assert (rec.trace_id, rec.span_id) == hex_ids(span)
    exported = [s.name for s in tracing.exporter.get_finished_spans()]
    if decision == "RECORD_AND_SAMPLE":
        assert exported == ["child", "audited"]
    else:  # recorded for the audit, still not exported as a trace
        assert exported == []
        assert not span.get_span_context().trace_flags.sampled


def test_without_audit_sampler_dropped_spans_never_reach_processors(
    trail: AuditTrail, make_tracing: Callable[..., Tracing]
) -> None:
    tracing = make_tracing(ALWAYS_OFF)
    tracing.provider.add_span_processor(AuditSpanProcessor(trail))
    with tracing.tracer.start_as_current_span("audited", attributes={
            "audit.action": "DELETE", "user.id": "s"}):
        pass
    assert trail.records() == []


def test_audit_sampler_under_parent_based_child(trail: AuditTrail,
                                                make_tracing: Callable[..., Tracing]) -> None:
    sampler = AuditSampler(ParentBased(ALWAYS_OFF))
    assert sampler.get_description().startswith("AuditSampler{ParentBased")
    tracing = make_tracing(sampler)
    tracing.provider.add_span_processor(AuditSpanProcessor(trail))
    with tracing.tracer.start_as_current_span("root"), \
            tracing.tracer.start_as_current_span("audited child", attributes={
                "audit.action": "EXECUTE", "user.id": "c"}) as child:
        pass
    (rec,) = trail.records()
    assert (rec.action, rec.span_id) == ("EXECUTE", hex_ids(child)[1])
