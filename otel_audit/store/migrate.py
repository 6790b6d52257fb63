"""Schema migrations with Alembic, run programmatically (``otel-audit migrate``).

The migration scripts ship inside the package (``otel_audit/store/migrations``), so no
``alembic.ini`` is needed; the revision table is ``otel_audit_alembic_version`` so it
never collides with an application's own Alembic history in the same database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["VERSION_TABLE", "current_revision", "head_revision", "upgrade"]

VERSION_TABLE = "otel_audit_alembic_version"
_SCRIPTS = Path(__file__).with_name("migrations")

#: Alembic's loggers that speak at INFO while the trail checks or upgrades its schema.
_ALEMBIC_LOGGERS = ("alembic.runtime.migration", "alembic.runtime.plugins", "alembic.ddl.impl",
                    "alembic.ddl.postgresql", "alembic.config")
_QUIET: ContextVar[bool] = ContextVar("otel_audit_quiet_migrations", default=False)


class _QuietMigrations(logging.Filter):
    """Drops Alembic's INFO/DEBUG lines while *our* migrations run in this context.

    An application whose root logger is at INFO would otherwise get a dozen Alembic lines
    through its own handlers each time a trail starts (and seven more when Alembic is
    first imported: its plugins announce themselves, which is why Alembic is imported
    lazily, inside :func:`_quiet`). A context variable (not a logger level) so that the
    application's own Alembic runs, on other threads, keep their logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _QUIET.get()


_FILTER = _QuietMigrations()
for _name in _ALEMBIC_LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)


@contextmanager
def _quiet() -> Iterator[None]:
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def _config() -> Config:
    with _quiet():
        from alembic.config import Config
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def head_revision() -> str:
    """Return the newest revision shipped with this release."""
    with _quiet():
        from alembic.script import ScriptDirectory
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database at ``engine`` is at (``None``: no schema)."""
    with _quiet(), engine.connect() as conn:
        from alembic.runtime.migration import MigrationContext

        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database at ``engine`` to ``revision`` (idempotent)."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    config = _config()
    with _quiet(), engine.begin() as conn:
        from alembic import command

        config.attributes["connection"] = conn
        command.upgrade(config, revision)
