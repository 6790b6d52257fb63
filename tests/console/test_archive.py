"""Searches and record pages continue into the Parquet archives of retention's prune."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from console_fixtures import NOW, USERS, Seeded, bearer
from sqlalchemy import create_engine, select
from starlette.testclient import TestClient

from otel_audit import AuditTrail
from otel_audit.console import create_app
from otel_audit.console.archive import archived_before
from otel_audit.console.data import ConsoleData
from otel_audit.console.query import Cursor, Viewer
from otel_audit.retention import prune
from otel_audit.store.schema import audit_trails

ARCHIVED = ("restricted", "review_alice", "review_bob", "failed", "read", "update", "old")


def _prune(seeded: Seeded, archive: Path) -> None:
    engine = create_engine(seeded.url)
    try:
        report = prune(engine, NOW - dt.timedelta(minutes=8), archive)
    finally:
        engine.dispose()
    assert report.archived > 60  # the bulk views and the named records


@contextmanager
def _client(seeded: Seeded, archive: Path) -> Iterator[TestClient]:
    app = create_app(seeded.url, users=USERS, secret="test-secret", archive_dir=str(archive))
    with TestClient(app, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def archived(seeded: Seeded, tmp_path: Path) -> Iterator[tuple[TestClient, Seeded]]:
    """The seeded store with everything older than 8 minutes pruned to an archive."""
    _prune(seeded, tmp_path / "archive")
    with _client(seeded, tmp_path / "archive") as client:
        yield client, seeded


def _live(seeded: Seeded, action: str, **fields: object) -> str:
    """Write one more (live) record into the seeded store; its ID."""
    trail = AuditTrail(seeded.url, service_name="billing", mode="sync")
    try:
        rec = trail.record(action, team_id="payments", **fields)
        assert rec is not None
        return rec.id
    finally:
        trail.shutdown()


def _ids_in_order(page: str, ids: list[str]) -> list[str]:
    """``ids`` found on ``page``, in the order the page shows them."""
    return sorted((i for i in ids if i in page), key=page.index)


def _badged(page: str) -> set[str]:
    """The IDs of the rows a page marks as archived."""
    rows = page.split("<tr")[1:]
    return {row.split('href="/records/', 1)[1].split('"', 1)[0]
            for row in rows if "archived-badge" in row}


def _all_pages(client: TestClient, user: str, query: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    url: str | None = f"/api/records?{query}&limit=20"
    while url:
        body = client.get(url, headers=bearer(user)).json()
        found += body["records"]
        url = f"/api/records?{query}&limit=20&after={body['next']}" if body["next"] else None
    return found


def test_search_pages_across_the_live_archive_boundary(
        archived: tuple[TestClient, Seeded]) -> None:
    client, seeded = archived
    got = _all_pages(client, "alice", "range=all&team=payments")
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids))  # no row twice across the boundary
    stamps = [(r["timestamp"], r["id"]) for r in got]
    assert stamps == sorted(stamps, reverse=True)  # newest first, id tiebreak
    assert ids[0] == seeded.ids["hostile"]  # the only live payments record alice sees
    for key in ARCHIVED:
        if key == "restricted":
            assert seeded.ids[key] not in ids  # scoping applies to the archive too
        else:
            assert seeded.ids[key] in ids
    assert sum(1 for r in got if str(r["resource_id"]).startswith("d")) == 60
    # an admin sees the archived restricted record; the other team sees none of these
    assert seeded.ids["restricted"] in {
        r["id"] for r in _all_pages(client, "carol", "range=all&resource_type=secret")}
    assert _all_pages(client, "dave", "range=all&team=payments") == []
    # filters apply to archived rows: one actor's failed login
    failed = _all_pages(client, "alice", "range=all&actor=mallory&outcome=failure")
    assert [r["id"] for r in failed] == [seeded.ids["failed"]]


def test_archived_rows_are_marked_and_their_records_open(
        archived: tuple[TestClient, Seeded]) -> None:
    client, seeded = archived
    page = client.get("/?range=all&actor=bob&resource_type=invoice", headers=bearer("alice"))
    assert page.status_code == 200 and "archived-badge" in page.text
    assert seeded.ids["update"] in page.text
    record = client.get(f"/api/records/{seeded.ids['update']}", headers=bearer("alice")).json()
    assert record["archived"] is True
    assert record["record"]["new_values"] == {"amount": 12, "state": "open"}
    live = client.get(f"/api/records/{seeded.ids['hostile']}", headers=bearer("alice")).json()
    assert live["archived"] is False
    shown = client.get(f"/records/{seeded.ids['update']}", headers=bearer("alice"))
    assert shown.status_code == 200 and "Integrity: archived" in shown.text
    for user, key in [("alice", "restricted"), ("dave", "update")]:
        hidden = client.get(f"/api/records/{seeded.ids[key]}", headers=bearer(user))
        assert hidden.status_code == 404


def test_review_queue_lists_archived_records_and_reviews_them(
        archived: tuple[TestClient, Seeded]) -> None:
    client, seeded = archived
    ids = seeded.ids
    fresh = _live(seeded, "approve", user_id="paul", resource_type="invoice",
                  resource_id="inv-9", requires_review=True)
    queued = [ids["review_bob"], ids["review_alice"], ids["restricted"], fresh]
    page = client.get("/review", headers=bearer("carol")).text
    # oldest first: the archived records lead, the live one follows; only they are marked
    assert _ids_in_order(page, queued) == queued
    assert _badged(page) == set(queued[:3])
    # scoping holds in the archive: no restricted record for alice, nothing for dave
    mine = client.get("/review", headers=bearer("alice")).text
    assert _ids_in_order(mine, queued) == [ids["review_bob"], ids["review_alice"], fresh]
    assert _ids_in_order(client.get("/review", headers=bearer("dave")).text, queued) == []
    # an archived record is reviewed like a live one, four eyes and once only
    own = client.post(f"/api/records/{ids['review_alice']}/review", json={"note": "me"},
                      headers=bearer("alice"))
    assert own.status_code == 409 and "four eyes" in own.json()["error"]
    done = client.post(f"/api/records/{ids['review_bob']}/review", json={"note": "checked"},
                       headers=bearer("alice"))
    assert done.status_code == 200 and done.json()["reviewer"] == "alice"
    engine = create_engine(seeded.url)
    try:
        with engine.connect() as conn:
            written = conn.execute(select(audit_trails.c.user_id).where(
                audit_trails.c.action == "audit.review",
                audit_trails.c.resource_type == "audit_record",
                audit_trails.c.resource_id == ids["review_bob"])).scalars().all()
    finally:
        engine.dispose()
    assert written == ["alice"]  # through the trail, into the live store
    again = client.post(f"/api/records/{ids['review_bob']}/review", json={"note": "again"},
                        headers=bearer("carol"))
    assert again.status_code == 409 and "already reviewed" in again.json()["error"]
    record = client.get(f"/api/records/{ids['review_bob']}", headers=bearer("carol")).json()
    assert record["archived"] is True
    assert [r["reviewer"] for r in record["reviews"]] == ["alice"]
    page = client.get("/review", headers=bearer("carol")).text
    assert _ids_in_order(page, queued) == [ids["review_alice"], ids["restricted"], fresh]


def test_review_queue_pages_across_the_boundary(
        archived: tuple[TestClient, Seeded], tmp_path: Path) -> None:
    _, seeded = archived
    ids = seeded.ids
    fresh = _live(seeded, "approve", user_id="paul", requires_review=True)
    data = ConsoleData(seeded.url, archive_dir=str(tmp_path / "archive"))
    try:
        for viewer, expected in [
                (Viewer("carol", "admin", ("*",)),
                 [ids["review_bob"], ids["review_alice"], ids["restricted"], fresh]),
                (Viewer("alice", "auditor", ("payments",)),
                 [ids["review_bob"], ids["review_alice"], fresh])]:
            got: list[str] = []
            marked: set[str] = set()
            after: Cursor | None = None
            while True:
                page, old = data.review_queue_page(viewer, None, limit=1, after=after)
                got += [r.id for r in page]
                marked |= old
                if not page:
                    break
                after = Cursor(page[-1].timestamp, page[-1].id)
            assert got == expected
            assert marked == set(expected) - {fresh}
        # past the archived days the queue reads the store alone
        until = archived_before(str(tmp_path / "archive"))
        assert until is not None and until > NOW
        later = _live(seeded, "approve", user_id="paul", requires_review=True,
                      timestamp=until + dt.timedelta(hours=1))
        admin = Viewer("carol", "admin", ("*",))
        assert data.review_queue_page(admin, None, after=Cursor(until, "")) == ([
            r for r in data.review_queue(admin, None) if r.id == later], set())
    finally:
        data.close()


def test_archived_reviews_keep_records_out_of_the_queue(
        seeded: Seeded, tmp_path: Path) -> None:
    trail = AuditTrail(seeded.url, service_name="otel-audit-console", mode="sync")
    assert trail.record("audit.review", timestamp=NOW - dt.timedelta(minutes=12),
                        user_id="bob", resource_type="audit_record",
                        resource_id=seeded.ids["review_alice"], context={"note": "old"},
                        requires_review=False) is not None
    trail.shutdown()
    _prune(seeded, tmp_path / "archive")  # the record and its review are both archived
    with _client(seeded, tmp_path / "archive") as client:
        page = client.get("/review", headers=bearer("carol")).text
        assert seeded.ids["review_bob"] in page and seeded.ids["review_alice"] not in page
        again = client.post(f"/api/records/{seeded.ids['review_alice']}/review",
                            json={"note": "twice"}, headers=bearer("carol"))
        assert again.status_code == 409 and "already reviewed" in again.json()["error"]
        record = client.get(f"/api/records/{seeded.ids['review_alice']}",
                            headers=bearer("carol")).json()
        assert [(r["reviewer"], r["note"]) for r in record["reviews"]] == [("bob", "old")]


def test_resource_page_continues_into_the_archive(
        archived: tuple[TestClient, Seeded]) -> None:
    client, seeded = archived
    fresh = _live(seeded, "read", user_id="paul", resource_type="invoice", resource_id="inv-1")
    history = [fresh, seeded.ids["read"], seeded.ids["update"]]
    page = client.get("/resources/invoice/inv-1", headers=bearer("alice"))
    assert page.status_code == 200
    assert _ids_in_order(page.text, history) == history  # newest first across the boundary
    assert _badged(page.text) == set(history[1:])
    hidden = client.get("/resources/secret/k1", headers=bearer("alice")).text
    assert seeded.ids["restricted"] not in hidden
    assert seeded.ids["restricted"] in client.get("/resources/secret/k1",
                                                  headers=bearer("carol")).text
    assert _ids_in_order(client.get("/resources/invoice/inv-1", headers=bearer("dave")).text,
                         history) == []


def test_actor_page_continues_into_the_archive(archived: tuple[TestClient, Seeded]) -> None:
    client, seeded = archived
    ids = seeded.ids
    history = [ids["hostile"], ids["review_bob"], ids["update"], ids["old"]]
    page = client.get("/actors/bob", headers=bearer("alice")).text
    assert _ids_in_order(page, [*history, ids["restricted"]]) == history
    assert _badged(page) == set(history[1:])
    assert "inv-2" in page and "r-old" in page  # what they accessed counts archived rows
    admin = client.get("/actors/bob", headers=bearer("carol")).text
    assert ids["restricted"] in admin and ids["restricted"] in _badged(admin)
    assert _ids_in_order(client.get("/actors/bob", headers=bearer("dave")).text,
                         history) == []
