"""Helpers of the integrity tests: writing varied records, tampering, verifying."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, text

from otel_audit import AuditTrail
from otel_audit.integrity.verify import VerifyReport, verify_trail

KEY = "test-chain-key"
BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def write_records(trail: AuditTrail, count: int, *, start: int = 0,
                  day_step: float = 0.0) -> None:
    """``count`` varied records (personal fields, JSON with personal keys, unicode)."""
    for i in range(start, start + count):
        trail.record(
            "UPDATE" if i % 3 else "READ",
            user_id=f"user-{i % 4}",
            user_email=f"user{i % 4}@example.com",
            client_ip="10.0.0.7",
            user_agent="pytest/1.0",
            resource_type="tool",
            resource_id=f"tool-{i}",
            team_id=f"team-{i % 2}",
            old_values={"name": f"old-{i}", "email": f"old{i}@example.com"} if i % 5 == 0
            else {"n": i, "ratio": 0.5, "big": 10**17},
            new_values={"name": f"new-{i} é", "tags": ["a", "b"], "nested": {"z": 1, "a": 2}},
            context={"phone": "+33 1 23"} if i % 7 == 0 else None,
            timestamp=BASE + dt.timedelta(days=i * day_step, seconds=i),
        )


def verify(engine: Engine, **kwargs: Any) -> VerifyReport:
    """Verify with the tests' key."""
    kwargs.setdefault("key", KEY.encode())
    return verify_trail(engine, **kwargs)


def execute(engine: Engine, sql: str, **params: Any) -> None:
    """Run one tampering statement."""
    with engine.begin() as conn:
        conn.execute(text(sql), params)


def kinds(report: VerifyReport) -> set[str]:
    """The kinds of a report's findings."""
    return {f.kind for f in report.findings}
