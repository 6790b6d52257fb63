"""One process, one SQLite file, every reader at once (run by test_one_sqlite_library.py).

    python one_sqlite_library.py DIR ITERATIONS

In this one process: a trail writes to a SQLite store continuously from its background
thread (async mode) while, many times over, a new ``AuditAnalytics`` attaches the same
file (the first open of DuckDB's bundled SQLite is what reset the WAL index of the
writer's connection) and queries it, and the console serves report pages (whole trail
and a scoped auditor's) and searches that continue into a Parquet archive that
retention's prune wrote from the same store. Then every written record must be in the
store and ``verify`` must find nothing. Prints ``OK <iterations> <records>``; a failed
check raises, a crash ends the process with a signal.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import sys
import threading
from pathlib import Path

from sqlalchemy import create_engine
from starlette.testclient import TestClient

from otel_audit import AuditTrail
from otel_audit.analytics import AuditAnalytics
from otel_audit.console import User, create_app, hash_token
from otel_audit.integrity.verify import verify_trail
from otel_audit.retention import prune

TOKENS = {"carol": "carol-token-0123456789", "alice": "alice-token-0123456789"}
USERS = [User("carol", "admin", ("*",), hash_token(TOKENS["carol"])),
         User("alice", "auditor", ("payments",), hash_token(TOKENS["alice"]))]


def _headers(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def run(root: Path, iterations: int) -> tuple[int, int]:
    """The scenario; returns (iterations, records written by the background writer)."""
    db = root / "audit.db"
    archive = root / "archive"
    url = f"sqlite:///{db}"
    now = dt.datetime.now(dt.UTC)
    seed = AuditTrail(url, auto_migrate=True, mode="sync", service_name="seed")
    for i in range(30):
        seed.record("read", timestamp=now - dt.timedelta(days=10, minutes=i), user_id="olga",
                    team_id="payments", resource_type="doc", resource_id=f"old-{i}")
    seed.shutdown()
    engine = create_engine(url)
    try:
        assert prune(engine, now - dt.timedelta(days=5), archive).archived == 30
    finally:
        engine.dispose()

    writer = AuditTrail(url, mode="async", service_name="writer", batch_size=1)
    stop = threading.Event()
    written: list[str] = []
    failures: list[BaseException] = []

    def write() -> None:
        i = 0
        try:
            while not stop.is_set():
                record = writer.record("update", user_id=f"user{i % 7}", team_id="payments",
                                       resource_type="doc", resource_id=f"d-{i}",
                                       requires_review=i % 10 == 0)
                assert record is not None
                written.append(record.id)
                i += 1
                # paced, not synchronised: a commit per record, up to ~2,000 a second,
                # keeps the trail a size whose every record and link is checked at the end
                stop.wait(0.0005)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    thread = threading.Thread(target=write, name="writer")
    thread.start()
    app = create_app(url, users=USERS, secret="scenario-secret", archive_dir=str(archive))
    try:
        with TestClient(app, base_url="http://testserver") as client:
            for k in range(iterations):
                # a new attachment of the file every time, while the writer commits
                with AuditAnalytics(url, archive_dir=archive) as analytics:
                    total = analytics.sql("SELECT count(*) FROM audit_trails").fetchone()
                    assert total is not None and total[0] >= 30
                    analytics.report("activity_by_team").fetchall()
                for name, report in (("carol", "activity_by_team"), ("alice", "pending_review")):
                    page = client.get(f"/api/reports/{report}", headers=_headers(name))
                    assert page.status_code == 200, page.text
                html = client.get("/reports/activity_by_team?run=1", headers=_headers("carol"))
                assert html.status_code == 200 and "<table" in html.text, html.status_code
                # olga's records are all archived: the page continues into the archive
                found = client.get("/api/records?range=all&actor=olga&limit=5",
                                   headers=_headers("alice" if k % 2 else "carol"))
                assert found.status_code == 200, found.text
                assert len(found.json()["records"]) == 5, found.text
                assert not failures, failures
    finally:
        stop.set()
        thread.join(timeout=60)
        writer.shutdown()
    assert not failures, failures
    assert written, "the writer wrote nothing"

    con = sqlite3.connect(db)
    try:
        stored = {row[0] for row in con.execute("SELECT id FROM audit_trails")}
    finally:
        con.close()
    missing = set(written) - stored
    assert not missing, f"{len(missing)} of {len(written)} written records are missing"
    engine = create_engine(url)
    try:
        report = verify_trail(engine, archive_dir=archive)
    finally:
        engine.dispose()
    assert report.ok, report
    return iterations, len(written)


if __name__ == "__main__":
    done, records = run(Path(sys.argv[1]), int(sys.argv[2]))
    print(f"OK {done} {records}")
