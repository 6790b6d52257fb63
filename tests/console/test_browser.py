"""The console in a real browser: Playwright driving the system's Chromium (no download).

Sign in, search, filter, save the search, page, open a record, follow its trace, review
it as a second user, export CSV, run a report and see its chart. Screenshots of the main pages go to
``tests/console/artifacts/``. Skipped without Chromium locally; a failure under CI.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_fixtures import TOKENS, TRACE, USERS, Seeded, seed

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not (os.path.exists(CHROMIUM) and shutil.which("chromium")):
    if os.environ.get("CI") == "true":
        pytest.fail("CI needs Chromium for the console's browser tests (.ci/run installs it)",
                    pytrace=False)
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Seeded]]:
    """The console on a free port of 127.0.0.1 (uvicorn in a thread), seeded SQLite."""
    import uvicorn

    from otel_audit.console import create_app

    path = tmp_path_factory.mktemp("browser") / "audit.db"
    seeded = seed(f"sqlite:///{path}", extra=60)
    app = create_app(seeded.url, users=USERS, secret="browser-secret",
                     trace_url="https://traces.example/trace/{trace_id}",
                     saved_searches=path.parent / "saved-searches.json")
    # the socket listens before the server thread starts: the browser's first
    # connection waits in its backlog until uvicorn accepts it (no polling for "started")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", seeded
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium, headless, from the system."""
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


def _shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)  # type: ignore[attr-defined]


def _sign_in(browser: object, base: str, user: str) -> object:
    context = browser.new_context(viewport={"width": 1400, "height": 900},  # type: ignore[attr-defined]
                                  accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(base + "/")
    assert page.url.startswith(base + "/login")
    page.fill("#token", TOKENS[user])
    page.click("#sign-in")
    page.wait_for_selector("#whoami")
    page.console_errors = errors  # CSP violations show up here
    return page


def test_auditor_journey(server: tuple[str, Seeded], browser: object,
                         tmp_path: Path) -> None:
    base, seeded = server
    page = _sign_in(browser, base, "alice")
    # search: the last 24 hours, her team only, newest first
    rows = page.locator("table.records tbody tr")
    assert rows.count() == 50
    assert "erin" not in page.content()  # another team's actor
    _shot(page, "search")
    # page to the older records
    page.click("#next-page")
    page.wait_for_selector("#first-page")
    assert rows.count() > 0 and "after=" in page.url
    # filter by action: the URL carries the filters (bookmarkable)
    page.goto(base + "/")
    page.fill("input[name=action]", "update")
    page.click("#apply")
    page.wait_for_url("**action=update**")
    assert rows.count() == 2  # the invoice update and the hostile page update
    assert page.locator("script:has-text('alert')").count() == 0  # hostile data inert
    # save this search; after a reload it is listed (kept on the server) and opens it
    page.fill("#save-search-name", "updates")
    page.click("#save-search button[type=submit]")
    page.wait_for_url("**action=update**")
    page.reload()
    saved = page.locator("#saved-searches a", has_text="updates")
    assert saved.count() == 1
    page.goto(base + "/")
    page.locator("#saved-searches a", has_text="updates").click()
    page.wait_for_url("**action=update**")
    assert rows.count() == 2
    # open the invoice update, then follow its trace to the trace's other records
    page.goto(base + "/?range=all&resource_id=inv-1&action=update")
    page.click("table.records a.rec")
    page.wait_for_selector("#integrity-state")
    assert seeded.ids["update"] in page.url
    assert "Integrity: ok" in page.inner_text("#integrity-state")
    assert page.locator("table.diff tr.changed").count() == 1  # amount 10 -> 12
    _shot(page, "record")
    page.click("#same-trace")
    page.wait_for_url(f"**trace_id={TRACE}**")
    assert rows.count() == 2
    # export the current search as CSV
    with page.expect_download() as info:
        page.click("#export-csv")
    target = tmp_path / "export.csv"
    info.value.save_as(target)
    exported = list(csv.DictReader(target.open(encoding="utf-8")))
    assert {r["trace_id"] for r in exported} == {TRACE} and len(exported) == 2
    assert page.console_errors == []  # type: ignore[attr-defined]
    page.context.close()


def test_second_user_reviews_and_admin_report(server: tuple[str, Seeded],
                                              browser: object) -> None:
    base, seeded = server
    # bob's deletion waits for review; bob cannot review it himself
    bob = _sign_in(browser, base, "bob")
    bob.goto(base + f"/records/{seeded.ids['review_bob']}")
    assert bob.locator("#mark-reviewed").count() == 0
    bob.context.close()
    alice = _sign_in(browser, base, "alice")
    alice.goto(base + "/review")
    assert seeded.ids["review_bob"] in alice.content()
    _shot(alice, "review")
    alice.goto(base + f"/records/{seeded.ids['review_bob']}")
    alice.fill("#review-note", "approved: ticket 42")
    alice.click("#mark-reviewed")
    alice.wait_for_selector("p.reviewed")
    assert "Reviewed by alice" in alice.inner_text("p.reviewed")
    alice.goto(base + "/review")
    assert seeded.ids["review_bob"] not in alice.content()
    alice.context.close()
    # an admin runs a report and sees its chart
    carol = _sign_in(browser, base, "carol")
    carol.goto(base + "/reports")
    carol.click("text=activity_by_team")
    carol.click("#run-report")
    carol.wait_for_selector("#chart[data-rendered=yes] canvas")
    assert "payments" in carol.inner_text("table.records")
    _shot(carol, "report")
    carol.goto(base + "/actors/bob")
    carol.wait_for_selector("#chart[data-rendered=yes] canvas")
    _shot(carol, "actor")
    assert carol.console_errors == []  # type: ignore[attr-defined]
    carol.context.close()
