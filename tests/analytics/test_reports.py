"""Every report against the fixture trail, on SQLite and PostgreSQL.

Each expected answer is computed in plain Python (``fixture_trail.expected_*``) from
the records as stored, never from SQL.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import fixture_trail as fx
import pytest

from otel_audit.analytics import AuditAnalytics, get_report, list_reports
from otel_audit.errors import QueryError
from otel_audit.record import AuditRecord

Records = list[AuditRecord]


def rows(analytics: AuditAnalytics, name: str, **params: Any) -> list[dict[str, Any]]:
    relation = analytics.report(name, **params)
    return [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]


def test_pack_has_the_named_reports_with_headers() -> None:
    names = {r.name for r in list_reports()}
    required = {
        "resource_history", "who_accessed", "privileged_after_hours", "failure_spikes",
        "failed_then_success", "pending_review", "deletions_by_actor", "confidential_access",
        "first_time_access", "dormant_then_active", "bulk_export_outliers",
        "audit_trail_reads", "trace_timeline", "new_client_for_user", "activity_by_team",
        "acting_as_usage",
    }
    assert required <= names
    assert len(names) >= 15
    for report in list_reports():
        assert report.description and report.controls
        for param in report.params:  # every declared parameter is used, and vice versa
            assert f"${param.name}" in report.sql
        assert any(c.startswith(("PCI DSS", "SOC 2", "HIPAA", "NIST")) for c in report.controls)


def test_resource_history(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_resource_history(fixture_records, "tool", "tool-2")
    got = rows(analytics, "resource_history", resource_type="tool", resource_id="tool-2")
    assert want
    assert [(r["id"], _json(r["old_values"]), _json(r["new_values"])) for r in got] == want


def test_who_accessed(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_who_accessed(fixture_records, "user-1", "user")
    got = rows(analytics, "who_accessed", resource_id="user-1", resource_type="user")
    assert want
    assert {r["user_id"]: (r["accesses"], r["reads"]) for r in got} == want
    any_type = rows(analytics, "who_accessed", resource_id="tool-1")
    assert {r["user_id"]: (r["accesses"], r["reads"]) for r in any_type} == \
        fx.expected_who_accessed(fixture_records, "tool-1")


def test_privileged_after_hours(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_privileged_after_hours(fixture_records)
    assert want
    assert [r["id"] for r in rows(analytics, "privileged_after_hours")] == want
    narrow = fx.expected_privileged_after_hours(fixture_records, 6, 22)
    assert [r["id"] for r in rows(analytics, "privileged_after_hours", start_hour="6",
                                  end_hour="22")] == narrow


def test_failure_spikes(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_failure_spikes(fixture_records)
    got = {(r["user_id"], r["day"], r["failures"]) for r in rows(analytics, "failure_spikes")}
    assert ("u4", dt.date(2026, 3, 11), 6) in {(u, d, f) for u, d, f in want if u == "u4"} or \
        any(u == "u4" for u, _, _ in want)
    assert got == want


def test_failed_then_success(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_failed_then_success(fixture_records)
    got = {(r["user_id"], r["action"], r["failures"])
           for r in rows(analytics, "failed_then_success")}
    assert ("u3", "LOGIN", 5) in want
    assert got == want
    wide = fx.expected_failed_then_success(fixture_records, 2, 60)
    assert {(r["user_id"], r["action"], r["failures"]) for r in rows(
        analytics, "failed_then_success", min_failures=2, window_minutes=60)} == wide
    assert ("u2", "LOGIN", 4) in wide and ("u1", "LOGIN", 2) in wide


def test_pending_review(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_pending_review(fixture_records)
    flagged = [r for r in fixture_records if r.requires_review]
    assert want and len(want) < len(flagged)  # some flagged records were reviewed
    assert [r["id"] for r in rows(analytics, "pending_review")] == want


def test_deletions_by_actor(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_deletions_by_actor(fixture_records)
    got = rows(analytics, "deletions_by_actor")
    assert want
    assert {r["user_id"]: (r["deletions"], r["failed"]) for r in got} == want
    since = dt.datetime(2026, 3, 12, tzinfo=dt.UTC)
    later = rows(analytics, "deletions_by_actor", since="2026-03-12T00:00:00+00:00")
    assert {r["user_id"]: (r["deletions"], r["failed"]) for r in later} == \
        fx.expected_deletions_by_actor(fixture_records, since)


def test_confidential_access(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_confidential_access(fixture_records)
    got = rows(analytics, "confidential_access")
    assert want
    assert {(r["user_id"], r["team_id"], r["day"]): r["accesses"] for r in got} == want


def test_first_time_access(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_first_time_access(fixture_records)
    got = rows(analytics, "first_time_access")
    by_id = {r.id: r for r in fixture_records}
    assert {(r["user_id"], r["resource_type"]): by_id[_id_of(r, fixture_records)].id
            for r in got} == want


def test_dormant_then_active(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_dormant_then_active(fixture_records)
    got = {(r["user_id"], r["returned_at"]) for r in rows(analytics, "dormant_then_active")}
    assert any(user == "u7" for user, _ in want)
    assert got == want


def test_bulk_export_outliers(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_bulk_export_outliers(fixture_records)
    got = rows(analytics, "bulk_export_outliers")
    assert want
    assert {r["id"] for r in got} == want
    assert {r["id"] for r in rows(analytics, "bulk_export_outliers", percentile="0.5")} == \
        fx.expected_bulk_export_outliers(fixture_records, 0.5)


def test_audit_trail_reads(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_audit_trail_reads(fixture_records)
    got = rows(analytics, "audit_trail_reads")
    assert len(want) == 2
    assert [r["id"] for r in got] == want
    assert {r["report"] for r in got} == {"pending_review", "who_accessed"}


def test_trace_timeline(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_trace_timeline(fixture_records, "ab" * 16)
    got = rows(analytics, "trace_timeline", trace_id="ab" * 16)
    assert len(want) == 3
    assert [r["id"] for r in got] == want
    assert [r["action"] for r in got] == ["READ", "UPDATE", "EXPORT"]


def test_new_client_for_user(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_new_client_for_user(fixture_records)
    got = {(r["user_id"], r["kind"], r["value"]) for r in rows(analytics, "new_client_for_user")}
    assert ("u7", "client_ip", "203.0.113.50") in want
    assert got == want


def test_activity_by_team(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_activity_by_team(fixture_records)
    got = rows(analytics, "activity_by_team")
    assert {r["team"]: (r["records"], r["users"], r["failures"]) for r in got} == want
    assert sum(r["records"] for r in got) == len(fixture_records)


def test_acting_as_usage(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_acting_as_usage(fixture_records)
    got = rows(analytics, "acting_as_usage")
    assert want
    assert {(r["actor"], r["on_behalf_of"]): (r["actions"], r["failed"]) for r in got} == want


def test_failed_logins_by_ip(analytics: AuditAnalytics, fixture_records: Records) -> None:
    want = fx.expected_failed_logins_by_ip(fixture_records)
    got = rows(analytics, "failed_logins_by_ip")
    assert want["198.51.100.7"] == (5, 1)
    assert {r["client_ip"]: (r["failures"], r["users"]) for r in got} == want


def test_report_parameters_are_checked() -> None:
    report = get_report("resource_history")
    with pytest.raises(QueryError, match="needs --param resource_id"):
        report.bind({"resource_type": "tool"})
    with pytest.raises(QueryError, match="has no parameter"):
        report.bind({"resource_type": "tool", "resource_id": "x", "nope": "1"})
    with pytest.raises(QueryError, match="expected INTEGER"):
        get_report("failure_spikes").bind({"min_failures": "many"})
    with pytest.raises(QueryError, match="no report named"):
        get_report("nope")


def _json(value: Any) -> Any:
    return None if value is None else json.loads(value)


def _id_of(row: dict[str, Any], records: Records) -> str:
    """The record the report's first touch refers to (user, type, time, resource)."""
    matches = [r.id for r in records if r.user_id == row["user_id"]
               and r.resource_type == row["resource_type"] and r.timestamp == row["first_at"]
               and r.resource_id == row["resource_id"]]
    assert len(matches) == 1
    return matches[0]
