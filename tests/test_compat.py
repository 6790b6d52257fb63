"""The seed-compatible AuditTrailService keeps the seed's behaviour and fixes its defects."""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.orm import Session

from otel_audit import AuditRecord, AuditTrail, AuditWriteError
from otel_audit.compat import (
    REVIEW_REQUIRED_ACTIONS,
    AuditAction,
    AuditTrailService,
    DataClassification,
    diff_values,
    get_audit_trail_service,
)

Factory = Callable[..., AuditTrail]


@pytest.fixture
def service(trail: AuditTrail) -> AuditTrailService:
    return AuditTrailService(trail)


def test_seed_names_and_defaults() -> None:
    sig = inspect.signature(AuditTrailService.log_action)
    assert list(sig.parameters)[1:5] == ["action", "resource_type", "resource_id", "user_id"]
    assert sig.parameters["success"].default is True
    assert inspect.signature(AuditTrailService.log_data_access).parameters[
        "access_type"].default == "READ"
    get_sig = inspect.signature(AuditTrailService.get_audit_trail)
    assert get_sig.parameters["limit"].default == 100
    assert get_sig.parameters["offset"].default == 0
    assert "db" in get_sig.parameters
    assert {a.value for a in AuditAction} == {"CREATE", "READ", "UPDATE", "DELETE", "EXECUTE",
                                              "ACCESS", "EXPORT", "IMPORT"}
    assert DataClassification.RESTRICTED.value == "restricted"
    assert "delete_tool" in REVIEW_REQUIRED_ACTIONS
    assert get_audit_trail_service() is get_audit_trail_service()


def test_log_action_returns_the_record(service: AuditTrailService) -> None:
    rec = service.log_action("CREATE", "tool", "t1", "alice", user_email="a@example.com",
                             details={"k": 1}, metadata={"m": 2}, context={"c": 3})
    assert isinstance(rec, AuditRecord)
    assert rec.context == {"c": 3, "details": {"k": 1}, "metadata": {"m": 2}}
    assert rec.data_classification is None  # log_action does not classify (seed behaviour)


def test_disabled_returns_none(make_trail: Factory) -> None:
    service = AuditTrailService(make_trail(enabled=False))
    assert service.log_action("CREATE", "tool", "t1", "alice") is None
    assert service.log_crud_operation("CREATE", "tool", "t1", "alice") is None


@pytest.mark.parametrize(
    ("action", "classification", "explicit", "expected"),
    [
        ("READ", None, None, False),
        ("READ", "confidential", None, True),
        ("READ", "restricted", None, True),
        ("READ", "restricted", False, False),  # explicit wins
        ("DELETE_TOOL", None, None, True),  # case-insensitive action list
        ("bulk_delete", "public", None, True),
        ("READ", "internal", True, True),
    ],
)
def test_review_rules(service: AuditTrailService, action: str, classification: str | None,
                      explicit: bool | None, expected: bool) -> None:
    rec = service.log_action(action, "tool", "t1", "u", data_classification=classification,
                             requires_review=explicit)
    assert rec is not None and rec.requires_review is expected


def test_crud_update_diff_with_nested_paths(service: AuditTrailService) -> None:
    rec = service.log_crud_operation(
        "UPDATE", "tool", "t1", "alice",
        old_values={"a": 1, "b": 2, "cfg": {"timeout": 1, "retries": 3}, "gone": 1},
        new_values={"a": 1, "b": 3, "cfg": {"timeout": 2, "retries": 3}, "new": 5},
    )
    assert rec is not None
    assert rec.changes == {
        "b": {"old": 2, "new": 3},
        "cfg.timeout": {"old": 1, "new": 2},
        "gone": {"old": 1, "new": None},
        "new": {"old": None, "new": 5},
    }
    create = service.log_crud_operation("CREATE", "tool", "t1", "alice", new_values={"a": 1})
    assert create is not None and create.changes is None


def test_diff_values_of_mapping_replaced_by_scalar() -> None:
    assert diff_values({"a": {"x": 1}}, {"a": 5}) == {"a": {"old": {"x": 1}, "new": 5}}


@pytest.mark.parametrize(
    ("operation", "resource_type", "classification", "review"),
    [
        ("READ", "user", "confidential", True),
        ("UPDATE", "credential", "confidential", True),
        ("UPDATE", "tool", "internal", False),
        ("DELETE", "tool", "internal", True),
        ("DELETE", "gateway", None, True),
        ("DELETE", "prompt", "internal", False),
        ("CREATE", "widget", None, False),
    ],
)
def test_crud_classification_and_review(service: AuditTrailService, operation: str,
                                        resource_type: str, classification: str | None,
                                        review: bool) -> None:
    rec = service.log_crud_operation(operation, resource_type, "r1", "u")
    assert rec is not None
    assert rec.data_classification == classification
    assert rec.requires_review is review


def test_classification_is_configurable(make_trail: Factory) -> None:
    from otel_audit import AuditPolicy

    policy = AuditPolicy(classification_by_resource_type={"invoice": "restricted"})
    service = AuditTrailService(make_trail(policy=policy))
    rec = service.log_crud_operation("READ", "invoice", "i1", "u")
    assert rec is not None and rec.data_classification == "restricted"
    assert service.log_crud_operation("READ", "user", "u1", "u").data_classification is None  # type: ignore[union-attr]


def test_log_data_access(service: AuditTrailService) -> None:
    rec = service.log_data_access("credential", "c1", "bob", data_classification="restricted")
    assert rec is not None
    assert (rec.action, rec.requires_review, rec.success) == ("READ", True, True)
    export = service.log_data_access("user", "u1", "bob", access_type="EXPORT")
    assert export is not None and export.action == "EXPORT" and not export.requires_review


def test_log_audit_description_and_context_not_mutated(service: AuditTrailService) -> None:
    ctx = {"k": "v"}
    rec = service.log_audit("bob", "tool", "t1", "EXECUTE", description="ran it", context=ctx)
    assert rec is not None
    assert rec.context == {"k": "v", "description": "ran it"}
    assert ctx == {"k": "v"}


def test_correlation_is_the_trace_id(service: AuditTrailService) -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("op") as span:
        rec = service.log_action("READ", "tool", "t1", "u")
    assert rec is not None
    assert rec.correlation_id == format(span.get_span_context().trace_id, "032x")


def test_get_audit_trail_sees_own_writes_newest_first(service: AuditTrailService) -> None:
    base = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    for i in range(5):
        service.log_action("UPDATE", "tool", "t1", "alice", context={"i": i})
    service.log_action("UPDATE", "tool", "t2", "bob")
    rows = service.get_audit_trail(resource_type="tool", resource_id="t1")
    assert [r.context["i"] for r in rows] == [4, 3, 2, 1, 0]
    assert len(service.get_audit_trail(user_id="bob")) == 1
    assert service.get_audit_trail(action="DELETE") == []
    assert len(service.get_audit_trail(limit=2, offset=1)) == 2
    future = service.get_audit_trail(start_time=base + dt.timedelta(days=3650))
    assert future == []
    page1 = service.get_audit_trail(limit=3)
    page2 = service.get_audit_trail(limit=3, after=page1[-1])
    assert {r.id for r in page1}.isdisjoint({r.id for r in page2})
    assert len(page1) + len(page2) == 6


def test_get_audit_trail_reads_through_a_given_session(service: AuditTrailService) -> None:
    service.log_action("READ", "tool", "t9", "carol")
    with Session(service.trail.writer.engine) as session:
        rows = service.get_audit_trail(resource_id="t9", db=session)
    assert [r.user_id for r in rows] == ["carol"]


def test_sync_mode_failures_raise(tmp_path: object) -> None:
    trail = AuditTrail(f"sqlite:///{tmp_path}/x.db", mode="sync")
    trail.writer.ensure_schema()
    with trail.writer.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE audit_trails")
    service = AuditTrailService(trail)
    with pytest.raises(AuditWriteError):
        service.log_action("READ", "tool", "t1", "u")
    trail.shutdown(1)
