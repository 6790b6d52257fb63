"""The OpenTelemetry Logs SDK in both directions, on a real LoggerProvider."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from otel_capture_helpers import Logs, Tracing, hex_ids

from otel_audit import AuditTrail
from otel_audit.otel import AuditLogRecordProcessor


def test_audit_log_records_become_records(trail: AuditTrail, logs: Logs,
                                          tracing: Tracing) -> None:
    logs.provider.add_log_record_processor(AuditLogRecordProcessor(trail))
    with tracing.tracer.start_as_current_span("request") as span:
        logs.logger.emit(event_name="audit", body="tool removed", attributes={
            "audit.action": "DELETE", "audit.resource.type": "tool", "audit.resource.id": "t-1",
            "audit.old_values": '{"name": "scraper"}', "user.id": "alice"})
    logs.logger.emit(attributes={"audit.action": "LOGIN", "user.id": "bob"})  # no event name
    logs.logger.emit(body="an ordinary log line", attributes={"user.id": "carol"})
    by_user = {r.user_id: r for r in trail.records()}
    assert set(by_user) == {"alice", "bob"}
    alice = by_user["alice"]
    assert (alice.action, alice.resource_type, alice.resource_id) == ("DELETE", "tool", "t-1")
    assert alice.old_values == {"name": "scraper"}
    assert alice.context == {"message": "tool removed"}
    assert alice.service_name == "svc-logs"
    assert (alice.trace_id, alice.span_id) == hex_ids(span)
    assert by_user["bob"].trace_id is None
    # everything, audit or not, still reaches the ordinary export
    assert len(logs.exporter.get_finished_logs()) == 3


def test_exception_marks_failure(trail: AuditTrail, logs: Logs) -> None:
    logs.provider.add_log_record_processor(AuditLogRecordProcessor(trail))
    logs.logger.emit(event_name="audit", exception=ValueError("bad input"),
                     attributes={"audit.action": "IMPORT", "user.id": "u"})
    (rec,) = trail.records()
    assert (rec.success, rec.error_message) == (False, "ValueError: bad input")


def test_emit_otel_logs(make_trail: Callable[..., AuditTrail], logs: Logs,
                        tracing: Tracing) -> None:
    trail = make_trail(emit_otel_logs=True, logger_provider=logs.provider)
    with tracing.tracer.start_as_current_span("request") as span:
        rec = trail.record("UPDATE", user_id="alice", resource_type="invoice",
                           resource_id="inv-1", new_values={"status": "sent"})
    assert rec is not None
    trail.flush()
    (exported,) = logs.exporter.get_finished_logs()
    log_record = exported.log_record
    assert log_record.event_name == "audit"
    attrs = dict(log_record.attributes or {})
    assert attrs["audit.record_id"] == rec.id
    assert attrs["audit.action"] == "UPDATE"
    assert attrs["user.id"] == "alice"
    assert attrs["audit.new_values"] == '{"status":"sent"}'
    trace_id, span_id = hex_ids(span)
    assert format(log_record.trace_id, "032x") == trace_id
    assert format(log_record.span_id, "016x") == span_id


def test_emitted_values_are_normalised_first(make_trail: Callable[..., AuditTrail],
                                             logs: Logs) -> None:
    trail = make_trail(emit_otel_logs=True, logger_provider=logs.provider)
    trail.record("UPDATE", user_id="u", resource_id="x" * 300)
    trail.flush()
    (exported,) = logs.exporter.get_finished_logs()
    attrs = exported.log_record.attributes or {}
    assert len(attrs["audit.resource.id"]) == 255  # the stored value, not the raw one
    assert "truncated" in str(attrs["audit.context"])


def test_emitter_and_processor_on_one_provider_do_not_loop(
    make_trail: Callable[..., AuditTrail], logs: Logs
) -> None:
    trail = make_trail(emit_otel_logs=True, logger_provider=logs.provider)
    logs.provider.add_log_record_processor(AuditLogRecordProcessor(trail))
    logs.logger.emit(event_name="audit", attributes={"audit.action": "READ", "user.id": "x"})
    trail.flush()
    trail.flush()  # anything a second round would have queued is written too
    assert [r.user_id for r in trail.records()] == ["x"]
    # one log from the app, one emitted by the trail for the stored record
    assert len(logs.exporter.get_finished_logs()) == 2


def test_emit_otel_logs_from_environment(make_trail: Callable[..., AuditTrail], logs: Logs,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_EMIT_OTEL_LOGS", "true")
    trail = make_trail(logger_provider=logs.provider)
    assert trail.config.emit_otel_logs is True
    trail.record("READ", user_id="env")
    trail.flush()
    assert len(logs.exporter.get_finished_logs()) == 1
