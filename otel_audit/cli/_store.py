"""Opening an existing store for the read commands, without ever creating one.

SQLAlchemy's SQLite driver and DuckDB's sqlite scanner both create a missing file, so a
mistyped ``--db`` path used to leave an empty database behind and fail later with a
traceback. The read commands (``query``, ``report``, ``export``, ``trace``, ``verify``,
``checkpoint``, ``hold``, ``forget``, ``prune``) call :func:`require_store` (or
:func:`open_existing_store`) first: a missing file or a store without the trail's table
is one :class:`~otel_audit.cli._app.CliError` line and exit status 2.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import normalise_database_url
from ..store.schema import audit_trails
from ._app import CliError, describe_error

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL

__all__ = ["open_existing_store", "require_store"]

_CREATE_HINT = "`otel-audit demo` or `otel-audit migrate --db URL` creates one"


def _sqlite_path(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None  # in memory, or a URI the driver resolves: nothing to look for
    return Path(database)


def _has_sqlite_table(path: Path) -> bool:
    # a read-only URI connection: it neither creates the file nor switches it to WAL
    uri = "file:" + str(path.resolve()).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
        try:
            row = con.execute("SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') "
                              "AND name = ?", (audit_trails.name,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise CliError(f"cannot read {path} as an SQLite database: {exc}") from exc
    return row is not None


def require_store(url: str) -> str:
    """Check that ``url`` names an existing store holding the audit trail; return ``url``.

    Never creates anything: a missing SQLite file, an unreachable server or a database
    without the ``audit_trails`` table raises :class:`CliError` with one line.
    """
    parsed = normalise_database_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_path(parsed)
        if path is None:
            return url
        if not path.is_file():
            raise CliError(f"no audit store at {path}: the file does not exist "
                           f"(read commands never create one; {_CREATE_HINT})")
        found = _has_sqlite_table(path)
    else:
        from sqlalchemy import inspect

        from ..store.writer import create_store_engine

        engine = create_store_engine(parsed)
        try:
            with engine.connect() as conn:
                found = inspect(conn).has_table(audit_trails.name)
        except Exception as exc:  # any driver error: unreachable, refused, no database
            raise CliError(f"cannot open the store {shown}: {describe_error(exc)}") from exc
        finally:
            engine.dispose()
    if not found:
        raise CliError(f"{shown} holds no audit trail (no {audit_trails.name} table; "
                       f"{_CREATE_HINT})")
    return url


def open_existing_store(url: str) -> Engine:
    """The store's engine, after :func:`require_store` checked that the trail is there."""
    from ..store.writer import create_store_engine

    return create_store_engine(require_store(url))
