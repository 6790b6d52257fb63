"""Writing batches of prepared records to the store, one transaction per batch.

Each dialect gets its fastest idempotent bulk path:

* SQLite: ``INSERT OR IGNORE`` through the driver's ``executemany`` (WAL mode,
  ``synchronous=NORMAL``, a busy timeout);
* PostgreSQL (psycopg 3): ``COPY ... FROM STDIN`` straight into the table; if the batch
  collides with rows already stored (a replay), it is copied into a temporary staging
  table and merged with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``;
* anything else SQLAlchemy speaks: a batched ``INSERT`` of the IDs not yet present.

Replaying a batch therefore never duplicates a row.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    NoSuchModuleError,
    SQLAlchemyError,
)
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.pool import QueuePool, StaticPool

from ..config import normalise_database_url
from ..errors import ConfigError, StoreError
from ..record import JSON_FIELDS, AuditRecord
from .schema import CHAIN_COLUMNS, RECORD_COLUMNS, audit_trails

__all__ = ["PreparedRecord", "StoreWriter", "create_store_engine", "to_row"]

logger = logging.getLogger("otel_audit.store")

ALL_COLUMNS = RECORD_COLUMNS + CHAIN_COLUMNS
_COLUMN_LIST = ", ".join(ALL_COLUMNS)


class PreparedRecord(NamedTuple):
    """A normalised record with its JSON texts and (once chained) its chain position."""

    record: AuditRecord
    texts: dict[str, str | None]
    stream: str | None = None
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None
    pii_salt: str | None = None
    pii: str | None = None


_ROW_FROM_RECORD = operator.itemgetter(*(AuditRecord._fields.index(c) for c in RECORD_COLUMNS))
_TS_POS = RECORD_COLUMNS.index("timestamp")
_JSON_COLUMN_POS = tuple((c, RECORD_COLUMNS.index(c)) for c in JSON_FIELDS)


def to_row(prepared: PreparedRecord, *, sqlite: bool) -> tuple[Any, ...]:
    """Return the column values of ``prepared`` in :data:`ALL_COLUMNS` order."""
    row = list(_ROW_FROM_RECORD(prepared.record))
    texts = prepared.texts
    for name, pos in _JSON_COLUMN_POS:
        row[pos] = texts[name]
    if sqlite:
        # the text format SQLAlchemy's SQLite DateTime reads back; normalise() made it UTC
        row[_TS_POS] = row[_TS_POS].isoformat(" ", "microseconds")[:26]
    row += prepared[2:]
    return tuple(row)


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


# SQLite binds at most 32,766 parameters per statement (999 before 3.32)
_SQLITE_MAX_PARAMS = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_SQLITE_ROWS_PER_STATEMENT = min(512, _SQLITE_MAX_PARAMS // len(ALL_COLUMNS))


@functools.lru_cache(maxsize=64)
def _sqlite_insert(rows: int) -> str:
    one = "(" + ", ".join("?" * len(ALL_COLUMNS)) + ")"
    values = ", ".join([one] * rows)
    return f"INSERT OR IGNORE INTO audit_trails ({_COLUMN_LIST}) VALUES {values}"


class StoreWriter:
    """Writes prepared records to one store; thread-safe, idempotent on ``id``."""

    def __init__(self, url: str | URL, *, auto_migrate: bool | None = None) -> None:
        self.url = normalise_database_url(url)
        self.engine = create_store_engine(self.url)
        self.dialect = self.engine.dialect.name
        self.auto_migrate = self.dialect == "sqlite" if auto_migrate is None else auto_migrate
        self._schema_ready = False
        self._lock = threading.Lock()

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

    def write(self, batch: Sequence[PreparedRecord]) -> None:
        """Write ``batch`` in one transaction. Raises :class:`StoreError` on failure."""
        if not batch:
            return
        self.ensure_schema()
        try:
            if self.dialect == "sqlite":
                self._write_sqlite(batch)
            elif self.dialect == "postgresql" and self.engine.driver == "psycopg":
                self._write_postgres(batch)
            else:
                self._write_generic(batch)
        except (DataError, SAIntegrityError) as exc:
            raise StoreError(f"store rejected the batch: {exc}", transient=False) from exc
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    def _write_sqlite(self, batch: Sequence[PreparedRecord]) -> None:
        rows = [to_row(p, sqlite=True) for p in batch]
        with self.engine.begin() as conn:
            # multi-row VALUES through the driver directly: one statement step per chunk
            # instead of one per row, and none of SQLAlchemy's per-row parameter handling
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                for start in range(0, len(rows), _SQLITE_ROWS_PER_STATEMENT):
                    chunk = rows[start:start + _SQLITE_ROWS_PER_STATEMENT]
                    cursor.execute(_sqlite_insert(len(chunk)), list(chain.from_iterable(chunk)))
            except Exception as exc:
                raise _wrap_dbapi_error(exc) from exc
            finally:
                cursor.close()

    def _write_postgres(self, batch: Sequence[PreparedRecord]) -> None:
        rows = [to_row(p, sqlite=False) for p in batch]
        try:
            with self.engine.begin() as conn:
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                with cursor.copy(f"COPY audit_trails ({_COLUMN_LIST}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        except SQLAlchemyError:
            raise
        except Exception as exc:  # psycopg errors raised inside COPY are not wrapped
            if _is_unique_violation(exc):
                self._merge_postgres(rows)
                return
            permanent = str(getattr(exc, "sqlstate", "") or "").startswith(("22", "23"))
            raise StoreError(f"store write failed: {exc}", transient=not permanent) from exc

    def _merge_postgres(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Replay path: stage the batch, then insert only what is not stored yet."""
        with self.engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _otel_audit_stage "
                "(LIKE audit_trails INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with cursor.copy(f"COPY _otel_audit_stage ({_COLUMN_LIST}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO audit_trails ({_COLUMN_LIST}) "
                f"SELECT {_COLUMN_LIST} FROM _otel_audit_stage ON CONFLICT DO NOTHING"
            )

    def _write_generic(self, batch: Sequence[PreparedRecord]) -> None:
        import json

        ids = [p.record.id for p in batch]
        with self.engine.begin() as conn:
            present = select(audit_trails.c.id).where(audit_trails.c.id.in_(ids))
            existing = set(conn.scalars(present))
            params = []
            for p in batch:
                if p.record.id in existing:
                    continue
                row = dict(zip(ALL_COLUMNS, to_row(p, sqlite=False), strict=True))
                for name in ("old_values", "new_values", "changes", "context"):
                    text = row[name]
                    row[name] = None if text is None else json.loads(text)
                params.append(row)
            if params:
                conn.execute(audit_trails.insert(), params)

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
        placeholder = "?" if self.dialect == "sqlite" else "%s"
        values = ", ".join([placeholder] * len(ALL_COLUMNS))
        if self.dialect == "sqlite":
            sql = f"INSERT OR IGNORE INTO audit_trails ({_COLUMN_LIST}) VALUES ({values})"
        elif self.dialect == "postgresql":
            sql = (f"INSERT INTO audit_trails ({_COLUMN_LIST}) VALUES ({values}) "
                   "ON CONFLICT DO NOTHING")
        else:
            raise StoreError(f"the transactional outbox does not support {self.dialect}",
                             transient=False)
        rows = [to_row(p, sqlite=self.dialect == "sqlite") for p in batch]
        try:
            connection.exec_driver_sql(sql, rows)
        except (DataError, SAIntegrityError) as exc:
            raise StoreError(f"store rejected the batch: {exc}", transient=False) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    def dispose(self, *, close: bool = True) -> None:
        """Release pooled connections (``close=False`` after fork: do not touch the parent's)."""
        self.engine.dispose(close=close)


def _wrap_dbapi_error(exc: Exception) -> StoreError:
    """Classify a raw driver error the way SQLAlchemy's wrappers are classified."""
    name = type(exc).__name__
    permanent = name in {"IntegrityError", "DataError"}
    return StoreError(f"store write failed: {exc}", transient=not permanent)


def _is_unique_violation(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == "23505"
