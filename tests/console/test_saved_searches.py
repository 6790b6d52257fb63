"""Saved searches: per user, on the server (a JSON file), CSRF on save and delete."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_fixtures import USERS, Seeded, bearer, sign_in
from starlette.testclient import TestClient

from otel_audit.console import create_app


@pytest.fixture
def client(seeded: Seeded, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(seeded.url, users=USERS, secret="test-secret",
                     saved_searches=tmp_path / "saved-searches.json")
    with TestClient(app, base_url="http://testserver") as found:
        yield found


def test_a_saved_search_is_listed_for_its_owner_only(client: TestClient,
                                                     tmp_path: Path) -> None:
    csrf = sign_in(client, "alice")
    saved = client.post("/searches", data={"csrf": csrf, "name": "  bob's   invoices ",
                                           "query": "actor=bob&resource_type=invoice&range=7d"},
                        follow_redirects=False)
    assert saved.status_code == 303
    assert saved.headers["location"] == "/?range=7d&actor=bob&resource_type=invoice"
    listed = client.get("/api/searches", headers=bearer("alice")).json()["searches"]
    assert listed == [{"name": "bob's invoices",
                       "params": {"range": "7d", "actor": "bob", "resource_type": "invoice"},
                       "url": "/?range=7d&actor=bob&resource_type=invoice"}]
    home = client.get("/").text
    assert "bob&#39;s invoices" in home and "/?range=7d&amp;actor=bob" in home
    assert client.get("/api/searches", headers=bearer("bob")).json() == {"searches": []}
    assert "/api/searches" in client.get("/api/openapi.json").json()["paths"]
    stored = tmp_path / "saved-searches.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert set(json.loads(stored.read_text())) == {"alice"}
    # the same name replaces; another user's delete of it finds nothing
    client.post("/searches", data={"csrf": csrf, "name": "bob's invoices", "query": "actor=x"})
    assert [s["params"] for s in client.get("/api/searches").json()["searches"]] == [
        {"actor": "x"}]


def test_save_and_delete_need_the_csrf_token(client: TestClient) -> None:
    csrf = sign_in(client, "alice")
    refused = client.post("/searches", data={"name": "x", "query": "actor=bob"})
    assert refused.status_code == 403
    forged = client.post("/searches", data={"csrf": "forged", "name": "x", "query": ""})
    assert forged.status_code == 403
    assert client.get("/api/searches").json() == {"searches": []}
    client.post("/searches", data={"csrf": csrf, "name": "x", "query": "actor=bob"})
    assert client.post("/searches/delete", data={"name": "x"}).status_code == 403
    assert len(client.get("/api/searches").json()["searches"]) == 1
    gone = client.post("/searches/delete", data={"csrf": csrf, "name": "x"},
                       follow_redirects=False)
    assert gone.status_code == 303
    assert client.get("/api/searches").json() == {"searches": []}
    again = client.post("/searches/delete", data={"csrf": csrf, "name": "x"})
    assert again.status_code == 404


def test_bad_searches_are_refused(client: TestClient) -> None:
    csrf = sign_in(client, "alice")
    assert client.post("/searches", data={"csrf": csrf, "name": "", "query": "actor=a"}
                       ).status_code == 400
    assert client.post("/searches", data={"csrf": csrf, "name": "n", "query": "range=forever"}
                       ).status_code == 400
    # unknown keys are not filters: only the search's filters are kept
    client.post("/searches", data={"csrf": csrf, "name": "n",
                                   "query": "actor=a&javascript=alert(1)&after=xyz"})
    assert client.get("/api/searches").json()["searches"][0]["params"] == {"actor": "a"}


def test_without_a_file_saved_searches_are_off(seeded: Seeded) -> None:
    app = create_app(seeded.url, users=USERS, secret="test-secret")
    with TestClient(app, base_url="http://testserver") as plain:
        assert plain.get("/api/searches", headers=bearer("alice")).status_code == 404
        assert 'action="/searches"' not in plain.get("/", headers=bearer("alice")).text


def test_the_file_next_to_the_users_file_is_the_default(seeded: Seeded, tmp_path: Path) -> None:
    users = tmp_path / "conf" / "users.json"
    users.parent.mkdir()
    users.write_text(json.dumps({"users": [
        {"name": u.name, "role": u.role, "teams": list(u.teams), "token_sha256": u.token_hash}
        for u in USERS]}))
    app = create_app(seeded.url, users_file=users, secret="test-secret")
    with TestClient(app, base_url="http://testserver") as client:
        csrf = sign_in(client, "dave")
        client.post("/searches", data={"csrf": csrf, "name": "mine", "query": "team=search"})
    assert "dave" in json.loads((users.parent / "saved-searches.json").read_text())
