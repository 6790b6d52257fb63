"""The console's JSON API and pages over a seeded store: auth, scoping, filters, keyset
pages, CSRF, four eyes, export caps, the audit of reads, and what the console writes."""

from __future__ import annotations

import csv
import io
import json

import pytest
from console_fixtures import HOSTILE, TOKENS, TRACE, USERS, Seeded, bearer, sign_in
from sqlalchemy import create_engine, select
from starlette.testclient import TestClient

from otel_audit.console import create_app
from otel_audit.console.query import CONSOLE_ACTIONS
from otel_audit.store.schema import audit_trails

Console = tuple[TestClient, Seeded]


def _ids(client: TestClient, user: str, **params: str) -> set[str]:
    response = client.get("/api/records", params={"range": "all", "limit": "500", **params},
                          headers=bearer(user))
    assert response.status_code == 200, response.text
    return {r["id"] for r in response.json()["records"]}


def _flush(client: TestClient) -> None:
    client.app.state.console.data.trail.flush()  # type: ignore[attr-defined]


def _rows(url: str) -> list[dict[str, object]]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(audit_trails)).mappings()]
    finally:
        engine.dispose()


# ------------------------------------------------------------------ who may see what

def test_no_token_wrong_token(console: Console) -> None:
    client, _ = console
    response = client.get("/api/records")
    assert response.status_code == 401
    assert response.json()["error"].startswith("sign in")
    assert client.get("/api/records", headers={"Authorization": "Bearer nope"}).status_code == 401
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_wrong_role(console: Console) -> None:
    client, _ = console
    assert client.get("/integrity/checkpoints.json", headers=bearer("alice")).status_code == 403
    assert client.post("/integrity/verify", headers=bearer("alice")).status_code == 403
    ok = client.get("/api/reports/failure_spikes", headers=bearer("carol"))
    assert ok.status_code == 200 and "columns" in ok.json()


def test_other_team_and_restricted_are_hidden(console: Console) -> None:
    client, seeded = console
    ids = seeded.ids
    alice = _ids(client, "alice")
    assert ids["update"] in alice and ids["other_team"] not in alice
    assert ids["restricted"] not in alice  # her team's, but restricted
    dave = _ids(client, "dave")
    assert dave == {ids["other_team"]}
    carol = _ids(client, "carol")
    assert {ids["restricted"], ids["other_team"], ids["update"]} <= carol
    assert client.get(f"/api/records/{ids['update']}", headers=bearer("dave")).status_code == 404
    assert client.get(f"/records/{ids['restricted']}", headers=bearer("alice")).status_code == 404
    assert client.get(f"/api/records/{ids['restricted']}",
                      headers=bearer("carol")).status_code == 200


# ------------------------------------------------------------------ filters and pages

@pytest.mark.parametrize("params, keys", [
    ({"actor": "bob"}, {"update", "review_bob", "restricted", "hostile", "old"}),
    ({"actor": "bob@example.com"}, {"update"}),
    ({"acting_as": "ops-bot"}, {"other_team"}),
    ({"action": "login"}, {"failed"}),
    ({"resource_type": "invoice", "resource_id": "inv-1"}, {"update", "read"}),
    ({"team": "search"}, {"other_team"}),
    ({"outcome": "failure"}, {"failed"}),
    ({"classification": "restricted"}, {"restricted"}),
    ({"review": "required"}, {"review_bob", "review_alice", "restricted"}),  # policy: restricted
    ({"service": "indexer"}, {"other_team"}),
    ({"trace_id": TRACE.upper()}, {"update", "read"}),
    ({"client_ip": "203.0.113.9"}, {"failed"}),
    ({"q": "BAD PASSWORD"}, {"failed"}),
    ({"q": "invoice one"}, {"update"}),
    ({"q": "100%"}, set()),
])
def test_every_filter(console: Console, params: dict[str, str], keys: set[str]) -> None:
    client, seeded = console
    assert _ids(client, "carol", **params) == {seeded.ids[k] for k in keys}


def test_time_range_default_is_24_hours(console: Console) -> None:
    client, seeded = console
    recent = client.get("/api/records", params={"limit": "500", "actor": "bob"},
                        headers=bearer("carol")).json()["records"]
    assert seeded.ids["old"] not in {r["id"] for r in recent}  # three days old
    assert seeded.ids["old"] in _ids(client, "carol", range="7d", actor="bob")


def test_keyset_pages_newest_first(console: Console) -> None:
    client, _ = console
    every = client.get("/api/records", params={"range": "all", "limit": "500"},
                       headers=bearer("carol")).json()["records"]
    seen: list[dict[str, str]] = []
    cursor = None
    while True:
        params = {"range": "all", "limit": "7", **({"after": cursor} if cursor else {})}
        page = client.get("/api/records", params=params, headers=bearer("carol")).json()
        seen += page["records"]
        cursor = page["next"]
        if cursor is None:
            break
    # the console's own audit.read records of these requests land as they go (newest
    # first, so on the first pages): the seeded trail must page whole and in order
    def seeded(records: list[dict[str, str]]) -> list[str]:
        return [r["id"] for r in records if not r["action"].startswith("audit.")]

    assert seeded(seen) == seeded(every)
    keys = [(r["timestamp"], r["id"]) for r in seen]
    assert keys == sorted(keys, reverse=True)
    assert len(seeded(seen)) == 69  # 9 seeded + 60 bulk


def test_bad_cursor_and_limit_are_json_errors(console: Console) -> None:
    client, _ = console
    for params in ({"after": "not-a-cursor"}, {"limit": "0"}, {"limit": "x"},
                   {"outcome": "perhaps"}):
        response = client.get("/api/records", params=params, headers=bearer("carol"))
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert "Traceback" not in response.text and response.json()["error"]


def test_search_page_paginates_with_links(console: Console) -> None:
    client, _ = console
    first = client.get("/?range=all", headers=bearer("carol"))
    assert first.status_code == 200 and 'id="next-page"' in first.text
    href = first.text.split('id="next-page"', 1)[0].rsplit('href="', 1)[1].split('"', 1)[0]
    second = client.get(href.replace("&amp;", "&"), headers=bearer("carol"))
    assert second.status_code == 200 and 'id="first-page"' in second.text
    assert 'id="next-page"' not in second.text  # 69 records, pages of 50


# ------------------------------------------------------------------ CSRF and reviews

def test_csrf_on_forms_and_cookie_api_calls(console: Console) -> None:
    client, seeded = console
    csrf = sign_in(client, "alice")
    target = seeded.ids["review_bob"]
    refused = client.post("/review", data={"record_id": target, "note": "ok"})
    assert refused.status_code == 403
    refused = client.post(f"/api/records/{target}/review", json={"note": "ok"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    done = client.post(f"/api/records/{target}/review", json={"note": "looks fine"},
                       headers={"X-CSRF-Token": csrf})
    assert done.status_code == 200 and done.json()["reviewer"] == "alice"


def test_four_eyes_and_single_review(console: Console) -> None:
    client, seeded = console
    own = client.post(f"/api/records/{seeded.ids['review_bob']}/review", json={"note": "me"},
                      headers=bearer("bob"))
    assert own.status_code == 409 and "four eyes" in own.json()["error"]
    ok = client.post(f"/api/records/{seeded.ids['review_bob']}/review",
                     json={"note": "checked"}, headers=bearer("alice"))
    assert ok.status_code == 200
    again = client.post(f"/api/records/{seeded.ids['review_bob']}/review",
                        json={"note": "again"}, headers=bearer("carol"))
    assert again.status_code == 409
    record = client.get(f"/api/records/{seeded.ids['review_bob']}", headers=bearer("carol"))
    assert [r["reviewer"] for r in record.json()["reviews"]] == ["alice"]
    queue = client.get("/review", headers=bearer("carol")).text
    assert seeded.ids["review_bob"] not in queue and seeded.ids["review_alice"] in queue


def test_bulk_review_with_one_note(console: Console) -> None:
    client, seeded = console
    csrf = sign_in(client, "carol")
    ids = [seeded.ids["review_bob"], seeded.ids["review_alice"]]
    response = client.post("/review", data={"csrf": csrf, "note": "quarterly check",
                                             "record_id": ids}, follow_redirects=False)
    assert response.status_code == 303 and "2+reviewed" in response.headers["location"]
    _flush(client)
    reviews = [r for r in _rows(seeded.url) if r["action"] == "audit.review"]
    assert sorted(r["resource_id"] for r in reviews) == sorted(ids)
    assert {r["user_id"] for r in reviews} == {"carol"}
    assert all(r["context"]["note"] == "quarterly check" for r in reviews)  # type: ignore[index]
    queue = client.get("/review").text
    assert not any(i in queue for i in ids) and seeded.ids["restricted"] in queue


# ------------------------------------------------------------------ exports

def test_export_csv_capped_utc(console: Console) -> None:
    client, _ = console
    response = client.get("/export", params={"range": "all", "format": "csv", "max_rows": "5"},
                          headers=bearer("carol"))
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 5 and all(r["timestamp"].endswith("Z") for r in rows)
    full = client.get("/export", params={"range": "all", "format": "jsonl"},
                      headers=bearer("alice"))
    lines = [json.loads(line) for line in full.text.splitlines()]
    assert {r["team_id"] for r in lines} == {"payments"}
    assert all(r["data_classification"] != "restricted" for r in lines)


def test_export_cap_is_configurable(seeded: Seeded) -> None:
    app = create_app(seeded.url, users=USERS, export_max_rows=3)
    with TestClient(app) as client:
        response = client.get("/export?range=all&format=jsonl&max_rows=50",
                              headers=bearer("carol"))
        assert len(response.text.splitlines()) == 3
        parquet = client.get("/export?range=all&format=parquet", headers=bearer("carol"))
        assert parquet.content[:4] == b"PAR1"
        assert client.get("/export?format=xml", headers=bearer("carol")).status_code == 400


# ------------------------------------------------------------------ audit of reads; writes

def test_reads_are_audited_and_only_console_records_are_written(console: Console) -> None:
    client, seeded = console
    before = {r["id"] for r in _rows(seeded.url)}
    client.get("/?actor=bob", headers=bearer("alice"))
    client.get(f"/records/{seeded.ids['update']}", headers=bearer("alice"))
    client.get("/api/records", headers=bearer("dave"))
    client.get("/export?range=all&format=csv", headers=bearer("alice"))
    client.get("/reports/failure_spikes?run=1", headers=bearer("carol"))
    client.post(f"/api/records/{seeded.ids['review_alice']}/review", json={"note": "n"},
                headers=bearer("bob"))
    _flush(client)
    new = [r for r in _rows(seeded.url) if r["id"] not in before]
    assert {r["action"] for r in new} <= set(CONSOLE_ACTIONS)
    assert {r["action"] for r in new} == set(CONSOLE_ACTIONS)
    assert {r["user_id"] for r in new} == {"alice", "dave", "carol", "bob"}
    assert not any(r["requires_review"] for r in new)
    page_read = next(r for r in new if r["resource_id"] == seeded.ids["update"])
    assert page_read["resource_type"] == "audit_record" and page_read["user_id"] == "alice"
    search = next(r for r in new if r["action"] == "audit.read" and r["user_id"] == "alice"
                  and r["resource_id"] == "search")
    assert search["context"]["filters"] == {"actor": "bob"}  # type: ignore[index]
    # the console's own records are never work in its queue, even when they ask for it
    queue = client.get("/api/records", params={"range": "all", "review": "required",
                                               "limit": "500"}, headers=bearer("carol"))
    assert not any(r["action"] in CONSOLE_ACTIONS for r in queue.json()["records"])


# ------------------------------------------------------------------ hostile data, headers

def test_hostile_values_render_inert(console: Console) -> None:
    client, seeded = console
    for path in ("/?range=all", f"/records/{seeded.ids['hostile']}", "/actors/bob"):
        page = client.get(path, headers=bearer("carol"))
        assert page.status_code == 200
        assert HOSTILE not in page.text and "<script>alert" not in page.text
        assert "&lt;script&gt;" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
    api = client.get(f"/api/records/{seeded.ids['hostile']}", headers=bearer("carol"))
    assert api.json()["record"]["resource_name"] == HOSTILE  # data, returned as data


def test_session_cookie_flags_and_login_errors(console: Console) -> None:
    client, _ = console
    page = client.get("/login")
    nonce = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    bad = client.post("/login", data={"csrf": nonce, "token": "wrong"})
    assert bad.status_code == 401 and "unknown token" in bad.text
    assert client.post("/login", data={"csrf": "forged", "token": TOKENS["alice"]}
                       ).status_code == 403
    page = client.get("/login")
    nonce = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    good = client.post("/login", data={"csrf": nonce, "token": TOKENS["alice"],
                                       "next": "//evil.example/"}, follow_redirects=False)
    assert good.headers["location"] == "/"  # never an open redirect
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_trusted_header_only_from_trusted_proxies(seeded: Seeded) -> None:
    header = {"X-Forwarded-User": "alice"}
    trusted = create_app(seeded.url, users=USERS, auth_header="X-Forwarded-User",
                         trusted_proxies=["testclient"])
    with TestClient(trusted) as client:
        assert client.get("/api/records", headers=header).status_code == 200
        assert client.get("/api/records",
                          headers={"X-Forwarded-User": "nobody"}).status_code == 401
    untrusted = create_app(seeded.url, users=USERS, auth_header="X-Forwarded-User")
    with TestClient(untrusted) as client:
        assert client.get("/api/records", headers=header).status_code == 401
    unset = create_app(seeded.url, users=USERS)
    with TestClient(unset) as client:
        assert client.get("/api/records", headers=header).status_code == 401


def test_openapi_healthz_and_integrity(console: Console) -> None:
    client, seeded = console
    doc = client.get("/api/openapi.json").json()
    assert {"/api/records", "/api/records/{record_id}/review", "/healthz"} <= set(doc["paths"])
    assert client.get("/healthz").json() == {"status": "ok"}
    record = client.get(f"/records/{seeded.ids['update']}", headers=bearer("carol")).text
    assert "Integrity: ok" in record
    summary = client.get("/api/integrity", headers=bearer("carol")).json()
    assert summary["can_verify"] is True


def test_settings_from_the_environment(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    users = [{"name": u.name, "role": u.role, "teams": list(u.teams),
              "token_sha256": u.token_hash} for u in USERS]
    monkeypatch.setenv("OTEL_AUDIT_CONSOLE_USERS", json.dumps(users))
    monkeypatch.setenv("OTEL_AUDIT_CONSOLE_EXPORT_MAX_ROWS", "4")
    monkeypatch.setenv("OTEL_AUDIT_CONSOLE_SECRET", "from-env")
    with TestClient(create_app(seeded.url)) as client:
        exported = client.get("/export?range=all&format=jsonl", headers=bearer("carol"))
        assert len(exported.text.splitlines()) == 4
        sign_in(client, "alice")
        cookie = client.cookies["otel_audit_session"]
    with TestClient(create_app(seeded.url)) as other:  # same key: the session holds
        other.cookies.set("otel_audit_session", cookie)
        assert other.get("/api/records").status_code == 200


def test_record_integrity_state_and_admin_verify(console: Console) -> None:
    client, seeded = console
    if not seeded.url.startswith("sqlite"):
        pytest.skip("tampering is done with SQLite's own driver")
    import sqlite3
    import threading

    path = seeded.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:  # an attacker edits one record in place
        conn.execute("UPDATE audit_trails SET resource_name = 'edited' WHERE id = ?",
                     (seeded.ids["read"],))
    page = client.get(f"/records/{seeded.ids['read']}", headers=bearer("carol")).text
    assert "Integrity: broken" in page and "does not match its hash" in page
    neighbour = client.get(f"/records/{seeded.ids['update']}", headers=bearer("carol")).text
    assert "Integrity: ok" in neighbour
    csrf = sign_in(client, "carol")
    started = client.post("/integrity/verify", data={"csrf": csrf}, follow_redirects=False)
    assert started.status_code == 303
    for thread in threading.enumerate():
        if thread.name == "otel-audit-console-verify":
            thread.join(timeout=60)
    summary = client.get("/api/integrity").json()
    assert summary["running"] is None and summary["last"]["ok"] is False
    assert any(f["record_id"] == seeded.ids["read"] and f["kind"] == "modified"
               for f in summary["last"]["findings"])
    assert "FAILED" in client.get("/integrity").text


def test_review_queue_filters_and_order(console: Console) -> None:
    client, seeded = console
    page = client.get("/review", headers=bearer("carol")).text
    order = [seeded.ids[k] for k in ("review_bob", "review_alice", "restricted")]
    assert all(i in page for i in order)
    positions = [page.index(i) for i in order]
    assert positions == sorted(positions)  # oldest first
    filtered = client.get("/review?action=bulk_delete", headers=bearer("carol")).text
    assert seeded.ids["review_alice"] in filtered and seeded.ids["review_bob"] not in filtered
    scoped = client.get("/review", headers=bearer("alice")).text
    assert seeded.ids["restricted"] not in scoped and seeded.ids["review_bob"] in scoped


def test_auditors_reports_cover_their_teams_without_restricted(console: Console) -> None:
    client, _ = console
    by_team = client.get("/api/reports/activity_by_team", headers=bearer("alice")).json()
    assert [row[0] for row in by_team["rows"]] == ["payments"]
    other = client.get("/api/reports/activity_by_team", headers=bearer("dave")).json()
    assert [row[0] for row in other["rows"]] == ["search"]
    everyone = client.get("/api/reports/activity_by_team", headers=bearer("carol")).json()
    assert {"payments", "search"} <= {row[0] for row in everyone["rows"]}
    # the seeded restricted read is the only confidential/restricted record
    hidden = client.get("/api/reports/confidential_access", headers=bearer("alice")).json()
    assert hidden["rows"] == []
    shown = client.get("/api/reports/confidential_access", headers=bearer("carol")).json()
    assert [(row[0], row[1]) for row in shown["rows"]] == [("bob", "payments")]
    # a parameter naming another team finds nothing outside the scope
    history = client.get("/api/reports/resource_history?resource_type=index&resource_id=ix",
                         headers=bearer("alice"))
    assert history.status_code == 200 and history.json()["rows"] == []
    page = client.get("/reports/activity_by_team?run=1", headers=bearer("dave")).text
    assert "search" in page and "payments" not in page


def test_report_parameters_and_unknown_reports(console: Console) -> None:
    client, _ = console
    listed = client.get("/api/reports", headers=bearer("alice")).json()["reports"]
    assert {"failure_spikes", "activity_by_team"} <= {r["name"] for r in listed}
    bad = client.get("/api/reports/failure_spikes?min_failures=many", headers=bearer("carol"))
    assert bad.status_code == 400 and "min_failures" in bad.json()["error"]
    assert client.get("/api/reports/nope", headers=bearer("carol")).status_code == 404
    rows = client.get("/api/reports/activity_by_team", headers=bearer("carol")).json()
    assert rows["columns"][0] == "team" and any(r[0] == "payments" for r in rows["rows"])
    download = client.get("/reports/activity_by_team?download=csv", headers=bearer("carol"))
    assert download.headers["content-type"].startswith("text/csv")
    assert download.text.splitlines()[0].startswith("team,records")
