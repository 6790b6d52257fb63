"""The console shows how a caller authenticated and the delegation chain, filters on the
auth method (live and archived pages), exports both and runs ``delegated_actions``."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_fixtures import HOSTILE, NOW, USERS, bearer
from sqlalchemy import create_engine
from starlette.testclient import TestClient

from otel_audit import AuditTrail
from otel_audit.console import create_app
from otel_audit.console.views import chain_steps
from otel_audit.retention import prune

CHAIN = [{"principal": "alice", "via": "oauth_token_exchange"},
         {"principal": "svc-reports", "via": "service_account"}]
HOSTILE_CHAIN = [{"principal": HOSTILE, "via": HOSTILE}]


def _seed(url: str) -> dict[str, str]:
    trail = AuditTrail(url, service_name="reports", mode="sync")
    ids: dict[str, str] = {}

    def add(key: str, minutes: int, **fields: object) -> None:
        fields.setdefault("team_id", "payments")
        rec = trail.record(str(fields.pop("action", "export")), resource_type="report",
                           resource_id=f"r-{key}",
                           timestamp=NOW - dt.timedelta(minutes=minutes), **fields)
        assert rec is not None
        ids[key] = rec.id

    add("delegated_old", 30, user_id="svc-reports", auth_method="oauth", acting_as="alice",
        delegation_chain=CHAIN)
    add("password_old", 25, user_id="bob", auth_method="password", action="read")
    add("delegated", 4, user_id="svc-reports", auth_method="oauth", delegation_chain=CHAIN)
    add("hostile", 3, user_id="svc-x", auth_method="mtls", delegation_chain=HOSTILE_CHAIN)
    add("plain", 2, user_id="bob", action="read")  # no identity fields: NULL
    add("review", 6, user_id="svc-reports", auth_method="api_key", action="delete_resource",
        delegation_chain=[{"principal": "alice", "via": "sso"}], requires_review=True)
    add("other_team", 1, user_id="svc-reports", auth_method="oauth", delegation_chain=CHAIN,
        team_id="search")
    trail.shutdown()
    return ids


@pytest.fixture
def seeded_ids(store_url: str) -> dict[str, str]:
    return _seed(store_url)


def _client(url: str, archive: Path | None = None) -> TestClient:
    app = create_app(url, users=USERS, secret="test-secret",
                     archive_dir=None if archive is None else str(archive))
    return TestClient(app, base_url="http://testserver")


@pytest.fixture
def client(store_url: str, seeded_ids: dict[str, str]) -> Iterator[TestClient]:
    with _client(store_url) as test_client:
        yield test_client


def _ids(client: TestClient, user: str, **params: str) -> set[str]:
    response = client.get("/api/records", params={"range": "all", "limit": "500", **params},
                          headers=bearer(user))
    assert response.status_code == 200, response.text
    return {r["id"] for r in response.json()["records"]}


def test_record_page_shows_auth_method_and_chain(client: TestClient,
                                                 seeded_ids: dict[str, str]) -> None:
    page = client.get(f"/records/{seeded_ids['delegated_old']}", headers=bearer("carol"))
    assert page.status_code == 200
    chain = page.text.split('id="delegation-chain">', 1)[1].split("</ol>", 1)[0]
    assert chain.index('href="/actors/alice"') < chain.index('href="/actors/svc-reports"')
    assert "via oauth_token_exchange" in chain and "via service_account" in chain
    assert re.search(r"<th>auth_method</th><td>\s*oauth\s*</td>", page.text)
    assert 'href="/actors/alice">alice</a>' in page.text  # acting_as links to the actor too
    plain = client.get(f"/records/{seeded_ids['plain']}", headers=bearer("carol")).text
    assert 'id="delegation-chain"' not in plain and "<th>delegation_chain</th>" in plain


def test_chain_values_are_escaped(client: TestClient, seeded_ids: dict[str, str]) -> None:
    page = client.get(f"/records/{seeded_ids['hostile']}", headers=bearer("carol")).text
    assert HOSTILE not in page and "&lt;script&gt;" in page
    assert 'id="delegation-chain"' in page


def test_chain_steps_for_display() -> None:
    assert chain_steps(None) == []
    assert chain_steps(CHAIN)[0] == {"principal": "alice", "via": "oauth_token_exchange",
                                     "raw": None}
    odd = chain_steps([{"principal": "p"}, "text", {"via": "v"}, {"principal": 7, "via": 1}])
    assert odd == [{"principal": "p", "via": None, "raw": None},
                   {"principal": None, "via": None, "raw": "text"},
                   {"principal": None, "via": None, "raw": '{"via": "v"}'},
                   {"principal": "7", "via": "1", "raw": None}]
    assert chain_steps({"principal": "x"}) == [{"principal": "x", "via": None, "raw": None}]
    assert chain_steps([{"principal": "x", "via": ""}])[0]["via"] is None


def test_api_record_and_auth_method_filter(client: TestClient,
                                           seeded_ids: dict[str, str]) -> None:
    record = client.get(f"/api/records/{seeded_ids['delegated']}",
                        headers=bearer("alice")).json()["record"]
    assert (record["auth_method"], record["delegation_chain"]) == ("oauth", CHAIN)
    plain = client.get(f"/api/records/{seeded_ids['plain']}", headers=bearer("alice")).json()
    assert (plain["record"]["auth_method"], plain["record"]["delegation_chain"]) == (None, None)
    ids = seeded_ids
    assert _ids(client, "carol", auth_method="oauth") == {
        ids["delegated_old"], ids["delegated"], ids["other_team"]}
    # scoping holds with the filter: alice sees the payments team only
    assert _ids(client, "alice", auth_method="oauth") == {ids["delegated_old"],
                                                          ids["delegated"]}
    assert _ids(client, "carol", auth_method="mtls", actor="svc-x") == {ids["hostile"]}
    page = client.get("/?range=all&auth_method=password", headers=bearer("carol")).text
    assert 'name="auth_method" value="password"' in page
    assert ids["password_old"] in page and ids["delegated"] not in page
    assert "delegated</span>" in client.get("/?range=all", headers=bearer("carol")).text
    doc = client.get("/api/openapi.json", headers=bearer("carol")).json()
    names = {p["name"] for p in doc["paths"]["/api/records"]["get"]["parameters"]}
    assert "auth_method" in names


def test_exports_carry_both_columns(client: TestClient, seeded_ids: dict[str, str]) -> None:
    response = client.get("/export?range=all&format=csv&auth_method=oauth",
                          headers=bearer("carol"))
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["id"] for r in rows} == {seeded_ids[k] for k in
                                       ("delegated_old", "delegated", "other_team")}
    assert all(r["auth_method"] == "oauth" and json.loads(r["delegation_chain"]) == CHAIN
               for r in rows)


def test_delegated_actions_report_in_the_console(client: TestClient) -> None:
    def rows(user: str) -> list[dict[str, object]]:
        response = client.get("/api/reports/delegated_actions", headers=bearer(user))
        assert response.status_code == 200, response.text
        body = response.json()
        return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]

    chain = "alice (oauth_token_exchange) > svc-reports (service_account)"
    admin = {(r["actor"], r["on_behalf_of"], r["chain"]): r["actions"] for r in rows("carol")}
    assert admin == {("svc-reports", None, chain): 2, ("svc-reports", "alice", chain): 1,
                     ("svc-x", None, f"{HOSTILE} ({HOSTILE})"): 1,
                     ("svc-reports", None, "alice (sso)"): 1}
    scoped = {(r["actor"], r["on_behalf_of"], r["chain"]): r["actions"] for r in rows("alice")}
    assert scoped[("svc-reports", None, chain)] == 1  # the search team's record is not hers
    page = client.get("/reports/delegated_actions", headers=bearer("carol")).text
    assert "ISO 27001 A.5.15" in page and HOSTILE not in page


def test_archived_records_keep_identity(store_url: str, seeded_ids: dict[str, str],
                                        tmp_path: Path) -> None:
    engine = create_engine(store_url)
    try:
        report = prune(engine, NOW - dt.timedelta(minutes=10), tmp_path / "archive")
    finally:
        engine.dispose()
    assert report.archived == 2
    with _client(store_url, tmp_path / "archive") as client:
        assert _ids(client, "carol", auth_method="oauth") == {
            seeded_ids["delegated_old"], seeded_ids["delegated"], seeded_ids["other_team"]}
        assert _ids(client, "carol", auth_method="password") == {seeded_ids["password_old"]}
        archived = client.get(f"/api/records/{seeded_ids['delegated_old']}",
                              headers=bearer("carol")).json()
        assert archived["archived"] is True
        assert (archived["record"]["auth_method"], archived["record"]["delegation_chain"],
                archived["record"]["acting_as"]) == ("oauth", CHAIN, "alice")
        page = client.get(f"/records/{seeded_ids['delegated_old']}", headers=bearer("carol"))
        assert 'id="delegation-chain"' in page.text and "via service_account" in page.text


def test_four_eyes_covers_the_delegation_chain(client: TestClient,
                                               seeded_ids: dict[str, str]) -> None:
    target = seeded_ids["review"]
    # alice delegated the action: she took part in it, so she may not review it
    own = client.post(f"/api/records/{target}/review", json={"note": "mine"},
                      headers=bearer("alice"))
    assert own.status_code == 409 and "four eyes" in own.json()["error"]
    done = client.post(f"/api/records/{target}/review", json={"note": "checked"},
                       headers=bearer("bob"))
    assert done.status_code == 200, done.text
