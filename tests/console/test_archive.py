"""Searches and record pages continue into the Parquet archives of retention's prune."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_fixtures import NOW, USERS, Seeded, bearer
from sqlalchemy import create_engine
from starlette.testclient import TestClient

from otel_audit.console import create_app
from otel_audit.retention import prune

ARCHIVED = ("restricted", "review_alice", "review_bob", "failed", "read", "update", "old")


@pytest.fixture
def archived(seeded: Seeded, tmp_path: Path) -> Iterator[tuple[TestClient, Seeded]]:
    """The seeded store with everything older than 8 minutes pruned to an archive."""
    engine = create_engine(seeded.url)
    try:
        report = prune(engine, NOW - dt.timedelta(minutes=8), tmp_path / "archive")
    finally:
        engine.dispose()
    assert report.archived > 60  # the bulk views and the named records
    app = create_app(seeded.url, users=USERS, secret="test-secret",
                     archive_dir=str(tmp_path / "archive"))
    with TestClient(app, base_url="http://testserver") as client:
        yield client, seeded


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
