"""A realistic simulated service for ``otel-audit demo``, notebooks and benchmarks.

Users in several teams work on tools, servers, prompts and gateways of an MCP-style
gateway under OpenTelemetry tracing: CRUD with old/new values, reads of confidential
data (users, tokens, credentials), failures (including bursts of failed logins before
a success), bulk exports, a service account acting on behalf of users, and some
activity outside business hours. Every request is a span; its audit records carry
the span's trace ID. The generator is seeded, so a demo database is reproducible.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from .context import RequestContext, request_scope
from .trail import AuditTrail

__all__ = ["DemoUser", "run_demo", "users"]

TEAMS = ("platform", "payments", "research", "support")
RESOURCES = ("tool", "server", "prompt", "gateway")
CONFIDENTIAL = ("user", "token", "credential")


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A simulated user."""

    user_id: str
    email: str
    team_id: str
    admin: bool
    ip: str
    agent: str
    night_owl: bool = False
    extra_ips: tuple[str, ...] = field(default=())


_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) Safari/605.1.15",
    "mcp-cli/1.4.2 (python 3.12)",
    "curl/8.10.1",
)


def users(rng: random.Random, count: int = 24) -> list[DemoUser]:
    """Return ``count`` users spread over :data:`TEAMS` (a few admins, a night owl)."""
    out = []
    names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
             "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent",
             "uma", "victor", "walter", "xena", "yusuf", "zoe", "quentin"]
    for i in range(count):
        name = names[i % len(names)] + ("" if i < len(names) else str(i))
        team = TEAMS[i % len(TEAMS)]
        out.append(
            DemoUser(
                user_id=name,
                email=f"{name}@example.com",
                team_id=team,
                admin=i % 6 == 0,
                ip=f"10.{i % 4}.{i}.{10 + i}",
                agent=_AGENTS[i % len(_AGENTS)],
                night_owl=name in {"mallory", "trent"},
                extra_ips=(f"203.0.113.{i}",) if name == "mallory" else (),
            )
        )
    return out


def _timestamp(rng: random.Random, start: dt.datetime, days: int, user: DemoUser) -> dt.datetime:
    day = start + dt.timedelta(days=rng.randrange(days))
    if user.night_owl and rng.random() < 0.5:
        hour = rng.choice([0, 1, 2, 3, 4, 5, 22, 23])
    elif rng.random() < 0.03:
        hour = rng.choice([6, 20, 21, 23])
    else:
        hour = rng.randint(8, 18)
        if day.weekday() >= 5 and rng.random() < 0.7:  # quiet weekends
            day -= dt.timedelta(days=day.weekday() - 4)
    return day.replace(hour=hour, minute=rng.randrange(60), second=rng.randrange(60),
                       microsecond=rng.randrange(1_000_000))


def _requests(rng: random.Random, people: list[DemoUser], total: int,
              start: dt.datetime, days: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yield ``(span name, [record kwargs ...])`` until ``total`` records are planned.

    Causal: requests come in time order (each request has at least one record, so
    ``total`` draws are enough), a resource is created before anything else happens to
    it, and nothing happens to it after it was deleted.
    """
    planned = 0
    counters = dict.fromkeys(RESOURCES, 0)
    live: dict[str, list[str]] = {kind: [] for kind in RESOURCES}
    draws = []
    for _ in range(total):
        someone = rng.choice(people)
        draws.append((_timestamp(rng, start, days, someone), someone.user_id, someone))
    draws.sort(key=lambda draw: draw[:2])
    for when, _, user in draws:
        if planned >= total:
            return
        ip = rng.choice(user.extra_ips) if user.extra_ips and rng.random() < 0.3 else user.ip
        base = {"user_id": user.user_id, "user_email": user.email, "team_id": user.team_id,
                "client_ip": ip, "user_agent": user.agent, "timestamp": when}
        roll = rng.random()
        records: list[dict[str, Any]]
        if roll < 0.006:  # brute force: failures then a success
            n = rng.randint(4, 8)
            records = [
                {**base, "action": "LOGIN", "resource_type": "session", "resource_id": user.user_id,
                 "success": False, "error_message": "invalid credentials",
                 "timestamp": when + dt.timedelta(seconds=i * 7)}
                for i in range(n)
            ]
            records.append({**base, "action": "LOGIN", "resource_type": "session",
                            "resource_id": user.user_id,
                            "timestamp": when + dt.timedelta(seconds=n * 7)})
            name = "POST /auth/login"
        elif roll < 0.22:  # confidential reads
            kind = rng.choice(CONFIDENTIAL)
            rid = f"{kind}-{rng.randrange(40)}"
            records = [{**base, "action": "READ", "resource_type": kind, "resource_id": rid,
                        "data_classification": "confidential" if kind != "credential"
                        else "restricted",
                        "request_method": "GET", "request_path": f"/{kind}s/{rid}"}]
            name = f"GET /{kind}s/{{id}}"
        elif roll < 0.25:  # exports, a few of them huge
            size = int(rng.lognormvariate(5, 1.0))
            if user.user_id == "mallory" and rng.random() < 0.5:
                size *= 60
            records = [{**base, "action": "EXPORT", "resource_type": "user",
                        "resource_id": "directory", "data_classification": "confidential",
                        "context": {"rows": size, "format": rng.choice(["csv", "json"])},
                        "request_method": "POST", "request_path": "/admin/export"}]
            name = "POST /admin/export"
        elif roll < 0.29 and live[kind := rng.choice(RESOURCES)]:  # acting for a user
            rid = rng.choice(live[kind])
            records = [{**base, "action": "EXECUTE", "resource_type": kind, "resource_id": rid,
                        "user_id": "svc-automation", "user_email": None,
                        "acting_as": user.user_id, "request_method": "POST",
                        "request_path": f"/{kind}s/{rid}/invoke"}]
            name = f"POST /{kind}s/{{id}}/invoke"
        else:  # CRUD
            kind = rng.choice(RESOURCES)
            op = rng.choices(["CREATE", "READ", "UPDATE", "DELETE"], weights=[2, 10, 4, 1])[0]
            if op == "CREATE" or not live[kind]:  # only what exists can be read or changed
                op = "CREATE"
                counters[kind] += 1
                rid = f"{kind}-{counters[kind]}"
            else:
                rid = rng.choice(live[kind])
            version = rng.randrange(1, 20)
            old = {"name": rid, "enabled": True, "config": {"timeout": version, "retries": 3}}
            new = {"name": rid, "enabled": rng.random() > 0.1,
                   "config": {"timeout": version + 1, "retries": 3}}
            record: dict[str, Any] = {
                **base, "action": op, "resource_type": kind, "resource_id": rid,
                "resource_name": rid.replace("-", " "),
                "request_method": {"CREATE": "POST", "READ": "GET", "UPDATE": "PUT",
                                   "DELETE": "DELETE"}[op],
                "request_path": f"/{kind}s/{rid}",
            }
            if op == "UPDATE":
                record["old_values"], record["new_values"] = old, new
                record["changes"] = {"config.timeout": {"old": version, "new": version + 1}}
            elif op == "CREATE":
                record["new_values"] = new
            elif op == "DELETE":
                record["old_values"] = old
            if op != "READ" and not user.admin and kind == "gateway" and rng.random() < 0.5:
                record["success"] = False
                record["error_message"] = "permission denied: gateway changes need admin"
            elif rng.random() < 0.03:
                record["success"] = False
                record["error_message"] = rng.choice(
                    ["upstream timeout", "validation failed: name", "conflict: version changed"])
            if record.get("success", True):
                if op == "CREATE":
                    live[kind].append(rid)
                elif op == "DELETE":
                    live[kind].remove(rid)
            records = [record]
            name = f"{record['request_method']} /{kind}s/{{id}}"
        planned += len(records)
        yield name, records


def run_demo(
    trail: AuditTrail,
    records: int = 10_000,
    *,
    seed: int = 42,
    days: int = 30,
    now: dt.datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write about ``records`` simulated audit records to ``trail``; return how many.

    Runs under its own ``TracerProvider`` (not exported), so every record carries the
    trace ID of its request span. ``progress`` is called with the number of records
    written since the last call.
    """
    rng = random.Random(seed)
    people = users(rng)
    end = (now or dt.datetime.now(dt.UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - dt.timedelta(days=days)
    provider = TracerProvider(resource=Resource.create({"service.name": trail.service_name}))
    tracer = provider.get_tracer("otel_audit.demo")
    written = 0
    for span_name, planned in _requests(rng, people, records, start, days):
        first = planned[0]
        ctx = RequestContext(client_ip=first["client_ip"], user_agent=first["user_agent"],
                             request_path=first.get("request_path"),
                             request_method=first.get("request_method"))
        with tracer.start_as_current_span(span_name, kind=trace.SpanKind.SERVER), \
                request_scope(ctx):
            for kwargs in planned:
                action = kwargs.pop("action")
                trail.record(action, **kwargs)
        written += len(planned)
        if progress is not None:
            progress(len(planned))
    provider.shutdown()
    return written
