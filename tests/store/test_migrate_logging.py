"""The trail's own migrations never log at INFO through the application's handlers."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext

from otel_audit import AuditTrail
from otel_audit.store.migrate import current_revision, head_revision
from otel_audit.store.writer import create_store_engine


def _alembic(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("alembic")]


def test_starting_a_trail_logs_no_alembic_lines_at_info(
        sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # an application whose root logger is at INFO
    for _ in range(2):  # creating the schema, then finding it at head
        trail = AuditTrail(sqlite_url, auto_migrate=True, mode="sync")
        trail.record("LOGIN", user_id="ann")
        trail.shutdown()
    engine = create_store_engine(sqlite_url)
    assert current_revision(engine) == head_revision()
    assert _alembic(caplog) == []
    # the application's own use of Alembic keeps its INFO lines
    with engine.connect() as conn:
        MigrationContext.configure(conn)
    engine.dispose()
    assert any(r.levelno == logging.INFO for r in _alembic(caplog))


def test_a_fresh_process_gets_no_alembic_lines_either(tmp_path: Path) -> None:
    """Also Alembic's import-time plugin lines: the first trail of a process imports it."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout,\n"
        "                    format='%(name)s|%(message)s')\n"
        "import otel_audit\n"
        f"trail = otel_audit.AuditTrail('sqlite:///{tmp_path}/a.db', auto_migrate=True,"
        " mode='sync')\n"
        "trail.record('LOGIN', user_id='ann')\n"
        "trail.shutdown()\n"
        "logging.getLogger('app').info('still logging')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "app|still logging" in done.stdout
    assert "alembic" not in done.stdout + done.stderr
