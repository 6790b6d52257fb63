"""A deterministic fixture trail with known patterns, and the reports' answers in plain Python.

``write_fixture(trail)`` writes about 500 records (seeded) that exercise every report:
CRUD with old/new values, confidential reads, brute force (and near misses), exports
with an outlier, a service account acting for users, a dormant user, a new client,
reviews and reads of the trail. The ``expected_*`` functions answer each report from
the records read back through SQLAlchemy, with no SQL and no DuckDB.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from otel_audit import AuditTrail
from otel_audit.record import AuditRecord

START = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)  # a Monday
USERS = [(f"u{i}", f"team{i % 3}") for i in range(8)]
CUD = {"CREATE", "UPDATE", "DELETE"}
PRIVILEGED = {"CREATE", "UPDATE", "DELETE", "EXPORT", "EXECUTE", "GRANT", "REVOKE"}


def _tid(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def write_fixture(trail: AuditTrail, seed: int = 7) -> list[AuditRecord]:
    """Write the fixture trail; return every stored record (read back from the store)."""
    rng = random.Random(seed)

    def at(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
        return START + dt.timedelta(days=day, hours=hour, minutes=minute, seconds=second,
                                    microseconds=rng.randrange(1_000_000))

    def rec(action: str, user: str, when: dt.datetime, **kw: Any) -> AuditRecord | None:
        team = dict(USERS).get(user, "ops")
        kw.setdefault("team_id", team)
        kw.setdefault("client_ip", f"10.0.0.{user[-1]}" if user[-1].isdigit() else "10.9.9.9")
        kw.setdefault("user_agent", "agent/1.0")
        kw.setdefault("trace_id", _tid(rng))
        kw.setdefault("span_id", f"{rng.getrandbits(64):016x}")
        return trail.record(action, user_id=user, timestamp=when, **kw)

    active = [u for u, _ in USERS if u != "u7"]
    for _ in range(300):  # CRUD and reads spread over 20 days and all hours
        user = rng.choice(active)
        day, hour = rng.randrange(20), rng.randrange(24)
        rid = f"tool-{rng.randrange(6)}"
        op = rng.choice(["CREATE", "READ", "READ", "UPDATE", "UPDATE", "DELETE"])
        kw: dict[str, Any] = {"resource_type": rng.choice(["tool", "prompt"]),
                              "resource_id": rid, "success": rng.random() > 0.1}
        if op == "UPDATE":
            v = rng.randrange(10)
            kw.update(old_values={"v": v}, new_values={"v": v + 1},
                      changes={"v": {"old": v, "new": v + 1}})
        elif op == "CREATE":
            kw["new_values"] = {"v": 0}
        elif op == "DELETE":
            kw["old_values"] = {"v": rng.randrange(10)}
        rec(op, user, at(day, hour, rng.randrange(60)), **kw)
    for _ in range(80):  # confidential and restricted reads
        user = rng.choice(active)
        kind = rng.choice(["user", "credential"])
        rec("READ", user, at(rng.randrange(20), rng.randrange(8, 18), rng.randrange(60)),
            resource_type=kind, resource_id=f"{kind}-{rng.randrange(5)}",
            data_classification="confidential" if kind == "user" else "restricted")
    for i in range(40):  # exports; one is huge
        rows = 10_000_000 if i == 17 else int(rng.lognormvariate(5, 0.5))
        rec("EXPORT", rng.choice(active), at(rng.randrange(20), 10, i),
            resource_type="user", resource_id="directory", context={"rows": rows})
    # brute force: 5 failures then a success within a minute (u3), and near misses
    when = at(5, 3)
    trace = _tid(rng)
    for i in range(5):
        rec("LOGIN", "u3", when + dt.timedelta(seconds=10 * i), resource_type="session",
            success=False, error_message="bad password", client_ip="198.51.100.7",
            trace_id=trace)
    rec("LOGIN", "u3", when + dt.timedelta(seconds=55), resource_type="session",
        client_ip="198.51.100.7", trace_id=trace)
    for i in range(2):  # too few failures
        rec("LOGIN", "u1", at(6, 9, i), resource_type="session", success=False)
    rec("LOGIN", "u1", at(6, 9, 5), resource_type="session")
    for i in range(4):  # enough failures, but spread over 40 minutes
        rec("LOGIN", "u2", at(7, 9, 10 * i), resource_type="session", success=False)
    rec("LOGIN", "u2", at(7, 9, 41), resource_type="session")
    for i in range(6):  # a failure spike for u4 on day 9
        rec("UPDATE", "u4", at(9, 14, i), resource_type="gateway", resource_id="gw-1",
            success=False, error_message="denied")
    for i in range(30):  # a service account acting for users
        rec("EXECUTE", "svc-bot", at(rng.randrange(20), rng.randrange(24), i),
            resource_type="tool", resource_id=f"tool-{i % 6}", acting_as=rng.choice(active),
            success=i % 7 != 0)
    # a dormant user: active on days 0-2, back on day 25 from a new address
    for day in (0, 1, 2):
        rec("READ", "u7", at(day, 11), resource_type="prompt", resource_id="prompt-1")
    rec("DELETE", "u7", at(25, 23), resource_type="server", resource_id="srv-9",
        old_values={"name": "srv-9"}, client_ip="203.0.113.50", user_agent="curl/8")
    # one multi-record trace
    trace = "ab" * 16
    for i, action in enumerate(["READ", "UPDATE", "EXPORT"]):
        rec(action, "u5", at(12, 15, 0, i), resource_type="tool", resource_id="tool-2",
            trace_id=trace, context={"rows": 5} if action == "EXPORT" else None)
    trail.flush()
    stored = trail.records(limit=1_000_000)
    # reviews of some flagged records, and reads of the trail itself
    flagged = sorted((r for r in stored if r.requires_review), key=lambda r: r.id)
    for r in flagged[::3]:
        rec("audit.review", "auditor", at(21, 10), resource_type="audit_record",
            resource_id=r.id)
    for report in ("pending_review", "who_accessed"):
        rec("audit.read", "auditor", at(21, 11), resource_type="audit_trail",
            resource_id=report, context={"report": report, "query": f"-- {report}"})
    trail.flush()
    return trail.records(limit=1_000_000)


# --------------------------------------------------------------- expected answers


def _order(records: Iterable[AuditRecord]) -> list[AuditRecord]:
    return sorted(records, key=lambda r: (r.timestamp, r.id))


def expected_resource_history(recs: list[AuditRecord], resource_type: str,
                              resource_id: str) -> list[tuple[Any, ...]]:
    return [(r.id, r.old_values, r.new_values) for r in _order(recs)
            if r.resource_type == resource_type and r.resource_id == resource_id
            and (r.old_values is not None or r.new_values is not None
                 or r.changes is not None or r.action.upper() in CUD)]


def expected_who_accessed(recs: list[AuditRecord], resource_id: str,
                          resource_type: str | None = None) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in recs:
        if r.resource_id == resource_id and resource_type in (None, r.resource_type):
            out[r.user_id][0] += 1
            out[r.user_id][1] += r.action.upper() in {"READ", "EXPORT"}
    return {k: (v[0], v[1]) for k, v in out.items()}


def expected_privileged_after_hours(recs: list[AuditRecord], start: int = 8,
                                    end: int = 18) -> list[str]:
    return [r.id for r in _order(recs)
            if (r.action.upper() in PRIVILEGED or r.data_classification == "restricted")
            and (r.timestamp.hour < start or r.timestamp.hour >= end
                 or r.timestamp.weekday() >= 5)]


def expected_failure_spikes(recs: list[AuditRecord], min_failures: int = 3,
                            factor: float = 3.0) -> set[tuple[str, dt.date, int]]:
    daily: dict[str, dict[dt.date, int]] = defaultdict(lambda: defaultdict(int))
    for r in recs:
        daily[r.user_id][r.timestamp.date()] += 0 if r.success else 1
    out = set()
    for user, days in daily.items():
        for day, failures in days.items():
            others = [f for d, f in days.items() if d != day]
            baseline = sum(others) / len(others) if others else 0.0
            if failures >= min_failures and failures > factor * baseline:
                out.add((user, day, failures))
    return out


def expected_failed_then_success(recs: list[AuditRecord], min_failures: int = 3,
                                 window_minutes: int = 10) -> set[tuple[str, str, int]]:
    out = set()
    streams: dict[tuple[str, str], list[AuditRecord]] = defaultdict(list)
    for r in _order(recs):
        streams[(r.user_id, r.action)].append(r)
    for (user, action), stream in streams.items():
        failures: list[AuditRecord] = []
        for r in stream:
            if not r.success:
                failures.append(r)
                continue
            window = dt.timedelta(minutes=window_minutes)
            if len(failures) >= min_failures and r.timestamp - failures[0].timestamp <= window:
                out.add((user, action, len(failures)))
            failures = []
    return out


def expected_pending_review(recs: list[AuditRecord]) -> list[str]:
    reviewed = {r.resource_id for r in recs
                if r.action == "audit.review" and r.resource_type == "audit_record"}
    return [r.id for r in _order(recs) if r.requires_review and r.id not in reviewed]


def expected_deletions_by_actor(recs: list[AuditRecord], since: dt.datetime | None = None
                                ) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in recs:
        if r.action.upper() == "DELETE" and (since is None or r.timestamp >= since):
            out[r.user_id][0] += 1
            out[r.user_id][1] += not r.success
    return {k: (v[0], v[1]) for k, v in out.items()}


def expected_confidential_access(recs: list[AuditRecord]) -> dict[tuple[Any, ...], int]:
    out: dict[tuple[Any, ...], int] = defaultdict(int)
    for r in recs:
        if r.data_classification in {"confidential", "restricted"}:
            out[(r.user_id, r.team_id, r.timestamp.date())] += 1
    return dict(out)


def expected_first_time_access(recs: list[AuditRecord]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for r in _order(recs):
        if r.resource_type is not None:
            out.setdefault((r.user_id, r.resource_type), r.id)
    return out


def expected_dormant_then_active(recs: list[AuditRecord], days: int = 14
                                 ) -> set[tuple[str, dt.datetime]]:
    last: dict[str, dt.datetime] = {}
    out = set()
    for r in _order(recs):
        previous = last.get(r.user_id)
        if previous is not None and r.timestamp - previous >= dt.timedelta(days=days):
            out.add((r.user_id, r.timestamp))
        last[r.user_id] = r.timestamp
    return out


def expected_bulk_export_outliers(recs: list[AuditRecord], p: float = 0.99) -> set[str]:
    exports = [(r.id, int(r.context["rows"])) for r in recs
               if r.action.upper() == "EXPORT" and r.context and "rows" in r.context]
    values = sorted(v for _, v in exports)
    pos = p * (len(values) - 1)  # linear interpolation between closest ranks
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    threshold = values[low] + (values[high] - values[low]) * (pos - low)
    return {i for i, v in exports if v > threshold}


def expected_audit_trail_reads(recs: list[AuditRecord]) -> list[str]:
    return [r.id for r in _order(recs) if r.action == "audit.read"]


def expected_trace_timeline(recs: list[AuditRecord], trace_id: str) -> list[str]:
    return [r.id for r in _order(recs) if r.trace_id == trace_id]


def expected_new_client_for_user(recs: list[AuditRecord]) -> set[tuple[str, str, str]]:
    first: dict[str, dt.datetime] = {}
    seen: dict[tuple[str, str, str], dt.datetime] = {}
    for r in _order(recs):
        first.setdefault(r.user_id, r.timestamp)
        for kind, value in (("client_ip", r.client_ip), ("user_agent", r.user_agent)):
            if value is not None:
                seen.setdefault((r.user_id, kind, value), r.timestamp)
    return {key for key, when in seen.items() if when > first[key[0]]}


def expected_activity_by_team(recs: list[AuditRecord]) -> dict[str, tuple[int, int, int]]:
    out: dict[str, list[Any]] = defaultdict(lambda: [0, set(), 0])
    for r in recs:
        row = out[r.team_id or "(none)"]
        row[0] += 1
        row[1].add(r.user_id)
        row[2] += not r.success
    return {k: (v[0], len(v[1]), v[2]) for k, v in out.items()}


def expected_acting_as_usage(recs: list[AuditRecord]) -> dict[tuple[str, str], tuple[int, int]]:
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in recs:
        if r.acting_as is not None:
            out[(r.user_id, r.acting_as)][0] += 1
            out[(r.user_id, r.acting_as)][1] += not r.success
    return {k: (v[0], v[1]) for k, v in out.items()}


def expected_failed_logins_by_ip(recs: list[AuditRecord], min_failures: int = 3
                                 ) -> dict[str, tuple[int, int]]:
    out: dict[str, list[Any]] = defaultdict(lambda: [0, set()])
    for r in recs:
        if r.action.upper() == "LOGIN" and not r.success and r.client_ip is not None:
            out[r.client_ip][0] += 1
            out[r.client_ip][1].add(r.user_id)
    return {k: (v[0], len(v[1])) for k, v in out.items() if v[0] >= min_failures}
