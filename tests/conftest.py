"""Shared fixtures: a fresh SQLite file and a fresh PostgreSQL database per test session.

PostgreSQL comes from ``OTEL_AUDIT_TEST_POSTGRES_URL``. Locally the PostgreSQL tests
skip (with the reason) when it is unset; in CI (``CI=true``) a missing server is a
failure. Each test session creates its own database, so concurrent runs never see
each other's rows, and every test starts from empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from otel_audit import AuditTrail, _accel
from otel_audit.store.migrate import upgrade
from otel_audit.store.writer import create_store_engine

PG_ENV = "OTEL_AUDIT_TEST_POSTGRES_URL"


def _pg_admin_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{PG_ENV} is not set: CI must test against PostgreSQL")
        return None
    return url


@pytest.fixture
def speedups() -> Any:
    """The compiled module: a failure in CI, a skip where it was not built (no C compiler
    at install; the pure-Python paths then run, and the other tests cover them)."""
    if _accel.pure_python:
        pytest.skip(f"{_accel.PURE_PYTHON_ENV}=1: the pure-Python paths are under test")
    try:
        from otel_audit import _speedups
    except ImportError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"otel_audit._speedups is not built: {exc}")
        pytest.skip("otel_audit._speedups is not built (no C compiler at install)")
    return _speedups


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """URL of a PostgreSQL database created for this test session (schema migrated)."""
    admin = _pg_admin_url()
    if admin is None:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1/test)")
    name = f"otel_audit_test_{uuid.uuid4().hex[:12]}"
    admin_url = make_url(admin).set(drivername="postgresql+psycopg")
    admin_engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin_engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # server down: a failure in CI, a skip locally
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"cannot create a test database on {admin}: {exc}")
        pytest.skip(f"PostgreSQL at {admin} is unavailable: {exc}")
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    engine = create_store_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin_engine.dispose()


def _truncate(url: str) -> None:
    engine = create_store_engine(url)
    with engine.begin() as conn:
        tables = conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT LIKE 'otel_audit_alembic%'")).scalars().all()
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables)))
    engine.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    _truncate(pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A fresh SQLite file for this test."""
    return f"sqlite:///{tmp_path}/audit.db"  # type: ignore[str-bytes-safe]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def make_trail(store_url: str) -> Iterator[Callable[..., AuditTrail]]:
    """Factory of trails on ``store_url`` (schema created), shut down after the test."""
    trails: list[AuditTrail] = []

    def factory(url: str | None = None, **settings: object) -> AuditTrail:
        settings.setdefault("auto_migrate", True)
        settings.setdefault("flush_interval", 0.05)
        trail = AuditTrail(url or store_url, **settings)  # type: ignore[arg-type]
        trails.append(trail)
        return trail

    yield factory
    for trail in trails:
        trail.shutdown(5)


@pytest.fixture
def trail(make_trail: Callable[..., AuditTrail]) -> AuditTrail:
    """An async trail on the parametrised store."""
    return make_trail()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never pick up a developer's OTEL_AUDIT_* settings.

    Default spool and journal directories of non-SQLite stores live under
    ``$XDG_STATE_HOME``: each test gets its own, so no test replays another's leftovers.
    """
    for key in list(os.environ):
        # the accelerator switch was read at import; it chooses the paths of the whole run
        if key.startswith("OTEL_AUDIT_") and key not in (PG_ENV, _accel.PURE_PYTHON_ENV):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
