"""The trail's own migrations never log at INFO through the application's handlers."""

from __future__ import annotations

import logging

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
