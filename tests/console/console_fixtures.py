"""Seeded store, users and sign-in helpers shared by the console tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from starlette.testclient import TestClient

from otel_audit import AuditTrail
from otel_audit.console import User, hash_token

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789",
          "carol": "carol-token-0123456789", "dave": "dave-token-0123456789"}
USERS = [
    User("alice", "auditor", ("payments",), hash_token(TOKENS["alice"])),
    User("bob", "auditor", ("payments",), hash_token(TOKENS["bob"])),
    User("carol", "admin", ("*",), hash_token(TOKENS["carol"])),
    User("dave", "auditor", ("search",), hash_token(TOKENS["dave"])),
]
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Seeded:
    url: str
    ids: dict[str, str]


def seed(url: str, *, extra: int = 0) -> Seeded:
    """Records of two teams: plain, failed, reviewed-needed, restricted, hostile."""
    trail = AuditTrail(url, service_name="billing", mode="sync")
    ids: dict[str, str] = {}

    def add(key: str, minutes: int, action: str, **fields: object) -> None:
        rec = trail.record(action, timestamp=NOW - dt.timedelta(minutes=minutes), **fields)
        assert rec is not None
        ids[key] = rec.id

    add("update", 50, "update", user_id="bob", user_email="bob@example.com",
        resource_type="invoice", resource_id="inv-1", resource_name="Invoice one",
        team_id="payments", trace_id=TRACE, old_values={"amount": 10, "state": "open"},
        new_values={"amount": 12, "state": "open"}, client_ip="10.0.0.7")
    add("read", 40, "read", user_id="alice", resource_type="invoice", resource_id="inv-1",
        team_id="payments", trace_id=TRACE)
    add("failed", 30, "login", user_id="mallory", team_id="payments", success=False,
        error_message="bad password for mallory", client_ip="203.0.113.9")
    add("review_bob", 20, "delete_resource", user_id="bob", resource_type="invoice",
        resource_id="inv-2", team_id="payments", requires_review=True)
    add("review_alice", 15, "bulk_delete", user_id="alice", resource_type="invoice",
        resource_id="inv-3", team_id="payments", requires_review=True)
    add("restricted", 10, "read", user_id="bob", resource_type="secret", resource_id="k1",
        team_id="payments", data_classification="restricted")
    add("other_team", 5, "update", user_id="erin", resource_type="index", resource_id="ix",
        team_id="search", acting_as="ops-bot", service_name="indexer")
    add("hostile", 3, "update", user_id="bob", resource_type="page", resource_id=HOSTILE,
        resource_name=HOSTILE, team_id="payments", new_values={"html": HOSTILE,
                                                               "big": "x" * 100_000})
    add("old", 3 * 24 * 60, "export", user_id="bob", team_id="payments",
        resource_type="report", resource_id="r-old")
    for i in range(extra):
        add(f"bulk{i}", 60 + i, "view", user_id="paul", team_id="payments",
            resource_type="doc", resource_id=f"d{i}")
    trail.shutdown()
    return Seeded(url, ids)


def bearer(name: str) -> dict[str, str]:
    """Authorization header of user ``name``."""
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def sign_in(client: TestClient, name: str) -> str:
    """Sign in through the form; return the session's CSRF token (from a page)."""
    page = client.get("/login")
    nonce = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    response = client.post("/login", data={"csrf": nonce, "token": TOKENS[name], "next": "/"},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    home = client.get("/")
    return home.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
