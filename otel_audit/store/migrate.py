"""Schema migrations with Alembic, run programmatically (``otel-audit migrate``).

The migration scripts ship inside the package (``otel_audit/store/migrations``), so no
``alembic.ini`` is needed; the revision table is ``otel_audit_alembic_version`` so it
never collides with an application's own Alembic history in the same database.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

__all__ = ["VERSION_TABLE", "current_revision", "head_revision", "upgrade"]

VERSION_TABLE = "otel_audit_alembic_version"
_SCRIPTS = Path(__file__).with_name("migrations")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def head_revision() -> str:
    """Return the newest revision shipped with this release."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database at ``engine`` is at (``None``: no schema)."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database at ``engine`` to ``revision`` (idempotent)."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
