"""Fixtures of the console tests: a seeded store (SQLite; PostgreSQL when set) and an app."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_fixtures import USERS, Seeded, seed
from starlette.testclient import TestClient

from otel_audit.console import create_app


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty store URL (PostgreSQL only when the server is configured)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    base = os.environ.get("OTEL_AUDIT_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PostgreSQL: set OTEL_AUDIT_TEST_POSTGRES_URL")
    from sqlalchemy import create_engine, text

    from otel_audit.config import normalise_database_url

    url = normalise_database_url(base)
    name = f"console_{os.getpid()}_{abs(hash(tmp_path)) % 10**8}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        scratch = url.set(database=name)
        from otel_audit.store.migrate import upgrade

        engine = create_engine(scratch)
        upgrade(engine)  # PostgreSQL stores are migrated explicitly (otel-audit migrate)
        engine.dispose()
        yield scratch.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def seeded(store_url: str) -> Seeded:
    """The seeded store."""
    return seed(store_url, extra=60)


@pytest.fixture
def console(seeded: Seeded) -> Iterator[tuple[TestClient, Seeded]]:
    """A test client of the console over the seeded store."""
    app = create_app(seeded.url, users=USERS, secret="test-secret",
                     trace_url="https://traces.example/trace/{trace_id}",
                     export_max_rows=1000)
    with TestClient(app, base_url="http://testserver") as client:
        yield client, seeded


