"""One SQLite library per process: DuckDB's bundled SQLite reads a SQLite store only in
a child process, never beside this process's ``sqlite3`` (sqlite.org/howtocorrupt.html,
section 2.2: two copies of SQLite in one process break its locking on one file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from otel_audit import AuditTrail
from otel_audit.analytics import AuditAnalytics
from otel_audit.analytics.isolated import call_in_child
from otel_audit.errors import QueryError, QueryRefusedError

HERE = Path(__file__).parent


def _mapped_sqlite_libraries(pid: int) -> set[str]:
    """The SQLite libraries mapped by process ``pid``: Python's own (``libsqlite3``) and
    DuckDB's scanner extension (which carries its copy of SQLite)."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        name = os.path.basename(path)
        if name.startswith("libsqlite3") or name.startswith("_sqlite3"):
            found.add("sqlite3")
        if "sqlite_scanner" in name:
            found.add("duckdb")
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_duckdb_sqlite_is_never_loaded_in_this_process(sqlite_url: str) -> None:
    trail = AuditTrail(sqlite_url, auto_migrate=True)  # this process's sqlite3, writing
    trail.record("read", user_id="alice", resource_type="doc", resource_id="d")
    trail.flush()
    with AuditAnalytics(sqlite_url) as analytics:
        assert analytics.sql("SELECT count(*) FROM audit_trails").fetchone() == (1,)
        child = analytics._isolated.pid if analytics._isolated is not None else None
        assert child is not None and child != os.getpid()
        assert "duckdb" not in _mapped_sqlite_libraries(os.getpid())
        assert "duckdb" in _mapped_sqlite_libraries(child)
    trail.shutdown()


def test_the_scenario_runs_clean_in_one_process(tmp_path: Path) -> None:
    # writer thread (async) + AuditAnalytics attaching the file again and again + console
    # report pages and archive searches, all in one process; run in a fresh interpreter
    # so that a crash (the bus error of two SQLite libraries) is this test's failure
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, str(HERE / "one_sqlite_library.py"),
                           str(tmp_path), "20"], capture_output=True, text=True,
                          timeout=600, env=env, check=False)
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    ok, iterations, records = done.stdout.split()
    assert ok == "OK" and int(iterations) == 20 and int(records) > 0


def test_a_dead_child_is_restarted(sqlite_url: str) -> None:
    trail = AuditTrail(sqlite_url, auto_migrate=True, mode="sync")
    trail.record("read", user_id="alice", resource_type="doc", resource_id="d")
    trail.shutdown()
    with AuditAnalytics(sqlite_url) as analytics:
        assert analytics._isolated is not None
        assert analytics.sql("SELECT count(*) FROM audit_trails").fetchone() == (1,)
        first = analytics._isolated.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with pytest.raises(QueryError, match="ended unexpectedly"):
            analytics.sql("SELECT count(*) FROM audit_trails").fetchall()
        # the next query starts a new child; refusals still come from the lock-down
        assert analytics.sql("SELECT count(*) FROM audit_trails").fetchone() == (1,)
        assert analytics._isolated.pid not in (None, first)
        with pytest.raises(QueryRefusedError):
            analytics.sql("SELECT * FROM read_text('/etc/passwd')")
    assert analytics._isolated.pid is None  # closed with its AuditAnalytics


def test_a_child_that_cannot_start_is_a_clear_error(sqlite_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    trail = AuditTrail(sqlite_url, auto_migrate=True, mode="sync")
    trail.record("read", user_id="alice", resource_type="doc", resource_id="d")
    trail.shutdown()
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with AuditAnalytics(sqlite_url) as analytics, \
            pytest.raises(QueryError, match="cannot start the analytics process"):
        analytics.sql("SELECT 1")


def test_only_the_named_calls_run_in_a_child() -> None:
    with pytest.raises(QueryRefusedError, match="no such child call"):
        call_in_child("os:system", "true")
