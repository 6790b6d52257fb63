"""Shared by the benchmarks: a scratch PostgreSQL database, migrated, dropped after use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from otel_audit.store.migrate import upgrade
from otel_audit.store.writer import create_store_engine


@contextmanager
def scratch_postgres(admin: str) -> Iterator[str]:
    """A fresh database on the server at ``admin`` (schema migrated), dropped after."""
    name = f"otel_audit_bench_{uuid.uuid4().hex[:10]}"
    admin_url = make_url(admin).set(drivername="postgresql+psycopg")
    admin_engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    engine = create_store_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()
