"""Alembic environment: runs on the connection handed over by otel_audit.store.migrate."""

from __future__ import annotations

from alembic import context

from otel_audit.store.migrate import VERSION_TABLE
from otel_audit.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
