"""The store writer: a trail's pipeline writes batches to its store through it.

It owns what belongs to the store as a whole (the engine, the schema check or upgrade,
the transactional outbox) and hands each batch to the exporter of the store's dialect
(:func:`store_exporter`): :class:`~otel_audit.exporters.sqlite.SQLiteExporter`
(multi-row ``INSERT OR IGNORE``), :class:`~otel_audit.exporters.postgres.PostgresExporter`
(psycopg's COPY, merged on a replay) or
:class:`~otel_audit.exporters.sqlalchemy.SQLAlchemyExporter` (anything else). Every
path is idempotent on ``id``: replaying a batch never duplicates a row. Rows go in the
chain's layout (:data:`~otel_audit.store.schema.ROW_COLUMNS`): a sealed record is
inserted as the very tuple its hash was computed over.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import QueuePool, StaticPool

from ..config import normalise_database_url
from ..errors import ConfigError, StoreError
from ..exporters.postgres import PostgresExporter
from ..exporters.sqlalchemy import SQLAlchemyExporter
from ..exporters.sqlite import SQLiteExporter
from ..exporters.store import BatchStream, StoreExporter
from ..prepared import PreparedRecord, chain_row, store_row
from .schema import audit_trails

__all__ = [
    "PreparedRecord", "StoreWriter", "chain_row", "create_store_engine", "store_exporter",
    "store_row",
]


def _sqlite_file(url: URL) -> str | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def create_store_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the store's connection settings.

    SQLite files are created readable by their owner only and opened in WAL mode.
    """
    parsed = normalise_database_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            path = _sqlite_file(parsed)
            # in-memory databases keep one connection; files pool a few (opening one
            # costs the WAL set-up, which is too much to pay per batch)
            connect_args = {"check_same_thread": False, **kwargs.pop("connect_args", {})}
            engine = create_engine(parsed, poolclass=StaticPool if path is None else QueuePool,
                                   connect_args=connect_args, **kwargs)

            @event.listens_for(engine, "do_connect")
            def _create_private_file(*_: Any) -> None:
                # created on first connect (never at construction), owner-only
                if path is not None and not os.path.exists(path):
                    directory = os.path.dirname(os.path.abspath(path))
                    os.makedirs(directory, exist_ok=True)
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=5000")
                if path is not None:
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

            return engine
        return create_engine(parsed, pool_pre_ping=True, **kwargs)
    except ModuleNotFoundError as exc:
        hint = " (pip install 'otel_audit[postgres]')" if "psycopg" in str(exc) else ""
        raise ConfigError(f"no driver for {parsed.drivername}: {exc}{hint}") from exc
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"cannot use database URL {parsed!r}: {exc}") from exc


def store_exporter(engine: Engine) -> StoreExporter:
    """The exporter of ``engine``'s store: the one place a dialect is chosen."""
    if engine.dialect.name == "sqlite":
        return SQLiteExporter(engine)
    if engine.dialect.name == "postgresql" and engine.driver == "psycopg":
        return PostgresExporter(engine)
    return SQLAlchemyExporter(engine)


class StoreWriter:
    """Writes prepared records to one store; thread-safe, idempotent on ``id``."""

    def __init__(self, url: str | URL, *, auto_migrate: bool | None = None) -> None:
        self.url = normalise_database_url(url)
        self.engine = create_store_engine(self.url)
        self.dialect = self.engine.dialect.name
        self.auto_migrate = self.dialect == "sqlite" if auto_migrate is None else auto_migrate
        #: an in-memory SQLite database: its one connection is the database
        self.in_memory = isinstance(self.engine.pool, StaticPool)
        self._schema_ready = False
        self._lock = threading.Lock()
        #: writes the batches (:mod:`otel_audit.exporters`)
        self.exporter = store_exporter(self.engine)

    # ----------------------------------------------------------------- schema

    def ensure_schema(self) -> None:
        """Create/upgrade the schema (``auto_migrate``) or check that it exists."""
        if self._schema_ready:
            return
        with self._lock:
            if self._schema_ready:
                return
            try:
                if self.auto_migrate:
                    from .migrate import upgrade

                    upgrade(self.engine)
                elif not inspect(self.engine).has_table(audit_trails.name):
                    raise StoreError(
                        f"table {audit_trails.name!r} does not exist in "
                        f"{self.url.render_as_string(hide_password=True)}; "
                        "run `otel-audit migrate --db URL`"
                    )
            except (SQLAlchemyError, OSError) as exc:
                raise StoreError(f"cannot prepare the store: {exc}") from exc
            self._schema_ready = True

    # ----------------------------------------------------------------- writes

    @property
    def own_thread(self) -> bool:
        """Whether the pipeline writes batches on a thread of their own (the
        exporter's :attr:`~otel_audit.exporters.base.AuditExporter.own_thread`)."""
        return self.exporter.own_thread

    def encode(self, batch: Sequence[PreparedRecord]) -> bytes | None:
        """What :meth:`write` would send for ``batch``, made ahead of the write (the
        PostgreSQL COPY text), so the pipeline's worker does that work; None where
        nothing is made ahead."""
        return self.exporter.encode(batch)

    def stream(self) -> BatchStream | None:
        """A batch written as it is prepared (the exporter's
        :meth:`~otel_audit.exporters.store.StoreExporter.stream`), or None."""
        self.ensure_schema()
        return self.exporter.stream()

    def write(self, batch: Sequence[PreparedRecord], *, encoded: bytes | None = None) -> None:
        """Write ``batch`` in one transaction. Raises :class:`StoreError` on failure
        (``transient=False``: the batch's content is what the store refused).

        ``encoded``: what :meth:`encode` returned for this very batch.
        """
        if not batch:
            return
        self.ensure_schema()
        self.exporter.write(batch, encoded=encoded)

    def write_on(self, connection: Connection, batch: Sequence[PreparedRecord]) -> None:
        """Insert ``batch`` inside the caller's transaction on ``connection`` (no commit).

        The transactional outbox: the rows commit or roll back with the caller's work.
        Idempotent like :meth:`write` — SQLite ``INSERT OR IGNORE``, PostgreSQL
        ``INSERT ... ON CONFLICT DO NOTHING`` (a ``COPY`` conflict would abort the
        caller's transaction).
        """
        if not batch:
            return
        self.ensure_schema()
        self.exporter.write_on(connection, batch)

    def interrupt(self, *, wait: bool = True) -> None:
        """Cancel the statement running on the writer's connection; callable from any
        thread (shutdown past its deadline). The write then fails as transient.

        ``wait=False``: send the cancel request from a thread of its own and return at
        once (a PostgreSQL cancel opens a connection, which an unreachable server makes
        wait)."""
        self.exporter.interrupt(wait=wait)

    def dispose(self, *, close: bool = True, timeout: float | None = None) -> None:
        """Release pooled connections (``close=False`` after fork: do not touch the parent's).
        An in-memory database keeps its one connection: it holds the records, which stay
        readable after the trail shut down.

        ``timeout``: how long to wait for a write in progress (None: as long as it
        takes); past it the write's statement is cancelled and its connection left to
        the thread running it."""
        if close:
            self.exporter.close(timeout)
        else:
            # after fork the kept connection is the parent's: never close it from here;
            # and a lock a parent's thread held at fork time would stay held here forever
            self.exporter.forget_after_fork()
            self._lock = threading.Lock()
        if close and self.in_memory:
            return  # closing its one connection would discard the records
        self.engine.dispose(close=close)

    @property
    def _bulk(self) -> Any:
        """The exporter's kept connection (None while closed), for tests and diagnostics."""
        return getattr(self.exporter, "_bulk", None)
