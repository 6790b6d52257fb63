"""otel_audit.testing: capture_audit() and the in-memory exporter, through the exporter
contract (what a refused, failed or raising export does to the trail's records)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import otel_audit
from otel_audit.exporters import AuditExporter, ExportResult, ExportStatus, PreparedRecord
from otel_audit.testing import InMemoryAuditExporter, capture_audit
from otel_audit.trail import get_trail, set_trail


def test_capture_audit_collects_records_and_restores_the_default_trail() -> None:
    before = set_trail(None)
    try:
        with capture_audit(service_name="billing") as audit:
            assert get_trail() is audit.trail
            get_trail().record("invoice.delete", user_id="u1", resource_type="invoice",
                               resource_id="42", old_values={"total": 10})
            get_trail().record("invoice.view", user_id="u2")
            records = audit.records
        assert [r.action for r in records] == ["invoice.delete", "invoice.view"]
        assert records[0].service_name == "billing"
        assert records[0].old_values == {"total": 10}
        assert [p.seq for p in audit.exporter.prepared] == [1, 2]  # chained like a store's
        from otel_audit.trail import _default_trail
        assert _default_trail is None
    finally:
        set_trail(before)


def test_records_survive_retryable_failures() -> None:
    exporter = InMemoryAuditExporter()
    exporter.fail_next(times=2)
    with capture_audit(exporter) as audit:
        for i in range(5):
            audit.trail.record("login", user_id=f"u{i}")
        assert audit.trail.flush(timeout=30)
        assert sorted(r.user_id for r in audit.records) == [f"u{i}" for i in range(5)]
        statuses = [result.status for _, result in exporter.calls]
        assert statuses[:2] == [ExportStatus.RETRYABLE] * 2
        assert statuses[-1] is ExportStatus.SUCCESS
        assert audit.trail.stats().failed == 0


def test_a_rejected_record_never_takes_its_batch_with_it() -> None:
    exporter = InMemoryAuditExporter(reject=lambda p: p.record.action == "poison")
    with capture_audit(exporter, mode="async", batch_size=8) as audit:
        for action in ["a", "b", "poison", "c"]:
            audit.trail.record(action, user_id="u")
        assert audit.trail.flush(timeout=30)
        assert [r.action for r in audit.records] == ["a", "b", "c"]
        stats = audit.trail.stats()
    assert stats.failed == 1 and stats.quarantined == 1
    assert any(s is ExportStatus.REJECTED for s in (r.status for _, r in exporter.calls))


class _Raising(AuditExporter):
    def __init__(self) -> None:
        self.calls = 0
        self.kept: list[PreparedRecord] = []

    def export(self, batch: Sequence[PreparedRecord]) -> ExportResult:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("broken exporter")
        self.kept.extend(batch)
        return ExportResult.success()


def test_an_exporter_that_raises_is_retried_not_fatal() -> None:
    exporter = _Raising()
    trail = otel_audit.AuditTrail("sqlite://", exporter=exporter)
    try:
        trail.record("export.raise", user_id="u")
        assert trail.flush(timeout=30)
        assert [p.record.action for p in exporter.kept] == ["export.raise"]
        assert exporter.calls >= 2
    finally:
        trail.shutdown()


def test_export_result_constructors() -> None:
    assert ExportResult.success().ok and ExportResult.success() is ExportResult.SUCCESS
    retry = ExportResult.retryable(OSError("refused"))
    assert retry.status is ExportStatus.RETRYABLE and retry.error == "refused" and not retry.ok
    rejected = ExportResult.rejected("bad value", [2, 5])
    assert rejected.status is ExportStatus.REJECTED and rejected.failed == (2, 5)


def test_sync_mode_reports_a_rejection_to_the_caller() -> None:
    exporter = InMemoryAuditExporter(reject=lambda p: True)
    with capture_audit(exporter, mode="sync") as audit:
        with pytest.raises(otel_audit.AuditWriteError):
            audit.trail.record("refused", user_id="u")
        assert audit.records == []


@pytest.mark.parametrize(("exc", "retried", "restarts"), [
    (LookupError("not the contract"), 2, 0),  # an exception: a retryable failure
    (SystemExit(3), 0, 2),  # not an Exception: the trail's threads count and go on
], ids=["Exception", "BaseException"])
def test_fail_next_with_an_exception_raises_it_from_export(
        exc: BaseException, retried: int, restarts: int) -> None:
    exporter = InMemoryAuditExporter()
    exporter.fail_next(exc, times=2)
    with capture_audit(exporter, retry_max_backoff=0.05) as audit:
        for i in range(3):
            audit.trail.record("raised", user_id=f"u{i}")
        assert audit.trail.flush(timeout=30)
        assert sorted(r.user_id for r in audit.records) == ["u0", "u1", "u2"]
        stats = audit.trail.stats()
        assert (stats.failed, stats.retried, stats.worker_restarts) == (0, retried, restarts)
    assert [r.status for _, r in exporter.calls[:2]] == [ExportStatus.RETRYABLE] * 2
    assert type(exc).__name__ in (exporter.calls[0][1].error or "")


def test_fail_all_is_an_outage_until_recover() -> None:
    exporter = InMemoryAuditExporter()
    exporter.fail_all()
    with capture_audit(exporter, retry_max_backoff=0.05) as audit:
        for i in range(20):
            audit.trail.record("outage", user_id=f"u{i}")
        assert not audit.trail.flush(timeout=0.3)  # nothing lands while it is down
        assert exporter.get_finished_records() == []
        assert audit.trail.stats().spooled == 20  # kept on disk meanwhile
        exporter.recover()
        assert audit.trail.flush(timeout=30)
        assert len(audit.records) == 20
        assert audit.trail.stats().failed == 0


def test_hold_stalls_exports_until_release() -> None:
    exporter = InMemoryAuditExporter()
    exporter.hold()
    with capture_audit(exporter) as audit:
        audit.trail.record("stalled", user_id="u")
        assert exporter.held.wait(30)  # the export waits at the gate
        assert exporter.get_finished_records() == []  # readable meanwhile
        assert not audit.trail.flush(timeout=0.1)
        exporter.release()
        assert not exporter.held.is_set()
        assert [r.action for r in audit.records] == ["stalled"]


def test_shutdown_lets_a_held_export_go() -> None:
    exporter = InMemoryAuditExporter()
    exporter.hold()
    # shut down, the exporter refuses what is left: the trail's own shutdown gives up soon
    with capture_audit(exporter, shutdown_timeout=1) as audit:
        audit.trail.record("held", user_id="u")
        assert exporter.held.wait(30)
        assert exporter.shutdown()
        assert not audit.trail.flush(timeout=0.2)  # refused once shut down: spooled


def test_wait_for_calls_returns_once_exports_were_answered() -> None:
    exporter = InMemoryAuditExporter()
    assert not exporter.wait_for_calls(1, timeout=0.05)
    exporter.fail_next()
    with capture_audit(exporter, retry_max_backoff=0.05) as audit:
        audit.trail.record("answered", user_id="u")
        assert exporter.wait_for_calls(2, timeout=30)  # the failure, then the retry
        assert [r.status for _, r in exporter.calls[:2]] == [ExportStatus.RETRYABLE,
                                                            ExportStatus.SUCCESS]
