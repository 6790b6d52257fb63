"""Helpers of the forwarding tests: a varied trail, row comparison, the CLI in a child."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from typing import Any

from sqlalchemy import Engine, select

from otel_audit import AuditTrail
from otel_audit.store.schema import audit_trails
from otel_audit.store.writer import create_store_engine

#: Columns that must arrive unchanged at another otel_audit (chain columns are the
#: receiver's own).
COMPARED = ("id", "timestamp", "correlation_id", "request_id", "trace_id", "span_id", "action",
            "resource_type", "resource_id", "resource_name", "user_id", "user_email",
            "team_id", "client_ip", "user_agent", "request_path", "request_method",
            "old_values", "new_values", "changes", "data_classification",
            "requires_review", "success", "error_message", "service_name", "acting_as")

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def fill(trail: AuditTrail, n: int, *, start: int = 0, service: str = "billing") -> None:
    """Record ``n`` varied records (JSON values, failures, personal fields) and flush."""
    base = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    for i in range(start, start + n):
        trail.submit(trail.build_record(
            "UPDATE" if i % 3 else "DELETE", user_id=f"user-{i % 7}",
            user_email=f"user{i % 7}@example.com", client_ip=f"10.0.0.{i % 250}",
            user_agent="curl/8", resource_type="invoice", resource_id=str(i),
            resource_name=f"invoice {i}", team_id="team-a", request_path=f"/invoices/{i}",
            request_method="PATCH", request_id=f"req-{i}", old_values={"amount": i},
            new_values={"amount": i + 1, "big": 12345678901234567, "note": "é|=\\"},
            success=i % 11 != 0, error_message=None if i % 11 else "denied",
            timestamp=base + dt.timedelta(seconds=i), trace_id=TRACE,
            span_id=format(i + 1, "016x"), service_name=service))
    assert trail.flush(30)


def rows(url: str) -> dict[str, dict[str, Any]]:
    """``id -> compared columns`` of every stored record."""
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execute(select(*(audit_trails.c[c] for c in COMPARED))).mappings()
            out = {}
            for row in result:
                values = dict(row)
                ts = values["timestamp"]
                if isinstance(ts, str):
                    ts = dt.datetime.fromisoformat(ts)
                values["timestamp"] = ts.replace(tzinfo=None) if ts.tzinfo is None else (
                    ts.astimezone(dt.UTC).replace(tzinfo=None))
                values["requires_review"] = bool(values["requires_review"])
                values["success"] = bool(values["success"])
                out[values["id"]] = values
            return out
    finally:
        engine.dispose()


#: ``otel-audit forward`` in a child process (the console script's entry point).
FORWARD_COMMAND = [sys.executable, "-c", "from otel_audit.cli import main; main()", "forward"]


def forward_cli(*args: str, check: bool = True, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """Run ``otel-audit forward ARGS`` in a child process."""
    result = subprocess.run(
        FORWARD_COMMAND + list(args), capture_output=True,
        text=True, timeout=240, env={**os.environ, **(env or {})}, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"forward failed ({result.returncode}): {result.stderr}")
    return result


def engine_of(url: str) -> Engine:
    """An engine on ``url`` (dispose it)."""
    return create_store_engine(url)

