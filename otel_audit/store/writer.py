"""Writing batches of prepared records to the store, one transaction per batch.

Each dialect gets its fastest idempotent bulk path:

* SQLite: multi-row ``INSERT OR IGNORE`` statements straight through the driver (WAL
  mode, ``synchronous=NORMAL``, a busy timeout);
* PostgreSQL (psycopg 3): ``COPY ... FROM STDIN`` straight into the table (the COPY
  text made by the pipeline's worker and sent, where the compiled ``_pqcopy`` is built,
  through psycopg's own libpq connection with one GIL release for the batch, or handed
  ahead to the writer's copier thread, which sends batches one after the other without
  the GIL: :meth:`StoreWriter.send_ahead`); if the batch collides with rows already
  stored (a replay), it is copied into a temporary staging table and merged with
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``;
* anything else SQLAlchemy speaks: a batched ``INSERT`` of the IDs not yet present.

Replaying a batch therefore never duplicates a row. Rows go in the chain's layout
(:data:`~otel_audit.store.schema.ROW_COLUMNS`): a sealed record is inserted as the very
tuple its hash was computed over.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any, Protocol

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
from ..prepared import PreparedRecord, chain_row, store_row
from ..record import JSON_FIELDS
from .schema import ROW_COLUMNS, audit_trails

__all__ = [
    "Ahead", "PreparedRecord", "StoreWriter", "chain_row", "create_store_engine", "store_row",
]

logger = logging.getLogger("otel_audit.store")

_COLUMN_LIST = ", ".join(ROW_COLUMNS)


_TS = ROW_COLUMNS.index("timestamp")
_REVIEW, _SUCCESS = ROW_COLUMNS.index("requires_review"), ROW_COLUMNS.index("success")


def _typed_params(prepared: PreparedRecord) -> tuple[Any, ...]:
    """The store row as typed parameters: an aware ``datetime`` (a session may be in any
    time zone) and booleans (PostgreSQL does not cast 0/1 parameters)."""
    row = list(store_row(prepared))
    record = prepared.record
    row[_TS], row[_REVIEW], row[_SUCCESS] = record.timestamp, record.requires_review, record.success
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


_COPY = f"COPY audit_trails ({_COLUMN_LIST}) FROM STDIN"

_COPY_COMMAND = _COPY.encode()

_copy_text: Callable[[list[tuple[Any, ...]]], bytes] | None
try:  # the compiled COPY text encoder (optional: built where a C compiler is)
    from .._accel import copy_text as _copy_text
except ImportError:  # pragma: no cover - depends on the build
    _copy_text = None

#: ``copy_in(pgconn_ptr, command, data, busy) -> None or (sqlstate or None, message)``
CopyIn = Callable[[int, bytes, bytes, bytearray | None], tuple[str | None, str] | None]


class Ahead(Protocol):
    """A batch handed to the writer's copier thread (:meth:`StoreWriter.send_ahead`)."""

    def wait(self) -> tuple[str | None, str] | bool | None:
        """None once committed, ``(sqlstate, message)`` if it failed, False if unsent."""


@functools.cache
def _pq_copy_in() -> CopyIn | None:
    """The compiled COPY (``otel_audit._pqcopy``) bound to the libpq psycopg loaded, or
    None where it is not built or that libpq cannot be found.

    psycopg's own COPY comes back for the GIL at each step of the protocol, and each
    time waits for a busy thread's switch interval; this one lets go of it once.
    """
    try:
        from .._accel import pqcopy as _pqcopy
    except ImportError:  # pragma: no cover - depends on the build
        return None
    try:
        from psycopg import pq

        if pq.__impl__ == "python":  # ctypes: the library it opened
            from psycopg.pq import _pq_ctypes

            path = _pq_ctypes.pq._name  # type: ignore[attr-defined]
        else:  # the compiled module that links libpq
            path = sys.modules[pq.PGconn.__module__].__file__
        _pqcopy.bind(path)
    except (ImportError, AttributeError, OSError, TypeError) as exc:
        logger.debug("compiled COPY unavailable, using psycopg's: %s", exc)
        return None
    return _pqcopy.copy_in


def _copy_failure(sqlstate: str | None, message: str) -> Exception:
    """The psycopg error of a failed compiled COPY (classified like psycopg's own)."""
    import psycopg
    from psycopg import errors

    if sqlstate is None:  # the connection failed
        return psycopg.OperationalError(message)
    try:
        return errors.lookup(sqlstate)(message)
    except KeyError:
        exc = psycopg.DatabaseError(message)
        exc.sqlstate = sqlstate
        return exc

# SQLite binds at most 32,766 parameters per statement (999 before 3.32)
_SQLITE_MAX_PARAMS = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_SQLITE_ROWS_PER_STATEMENT = min(512, _SQLITE_MAX_PARAMS // len(ROW_COLUMNS))


@functools.lru_cache(maxsize=256)
def _sqlite_insert(kept: tuple[int, ...], rows: int) -> str:
    one = "(" + ", ".join("?" * len(kept)) + ")"
    values = ", ".join([one] * rows)
    names = ", ".join(ROW_COLUMNS[i] for i in kept)
    return f"INSERT OR IGNORE INTO audit_trails ({names}) VALUES {values}"


def _python_sqlite_params(rows: list[tuple[Any, ...]]) -> tuple[tuple[int, ...], list[Any]]:
    """The positions of the columns not NULL in every row, and their values row after
    row (the compiled ``sqlite_params`` does the same in one pass)."""
    columns = list(zip(*rows, strict=True))
    kept = tuple(i for i, column in enumerate(columns) if column.count(None) != len(column))
    return kept, list(chain.from_iterable(zip(*(columns[i] for i in kept), strict=True)))


_sqlite_params: Callable[[list[tuple[Any, ...]]], tuple[tuple[int, ...], list[Any]]]
try:  # compiled (optional: built where a C compiler is)
    from .._accel import sqlite_params as _sqlite_params
except ImportError:  # pragma: no cover - depends on the build
    _sqlite_params = _python_sqlite_params


def _sqlite_insert_rows(cursor: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    """Multi-row VALUES straight through the driver: one statement step per chunk
    instead of one per row, and none of SQLAlchemy's per-row parameter handling.

    Columns NULL in every row of a chunk are left out of its statement (they default
    to NULL): the driver binds a NULL parameter through its adapter lookup, which
    costs more than a string's, with the GIL held.
    """
    for start in range(0, len(rows), _SQLITE_ROWS_PER_STATEMENT):
        chunk = list(rows[start:start + _SQLITE_ROWS_PER_STATEMENT])
        kept, params = _sqlite_params(chunk)
        cursor.execute(_sqlite_insert(kept, len(chunk)), params)


class StoreWriter:
    """Writes prepared records to one store; thread-safe, idempotent on ``id``."""

    def __init__(self, url: str | URL, *, auto_migrate: bool | None = None) -> None:
        self.url = normalise_database_url(url)
        self.engine = create_store_engine(self.url)
        self.dialect = self.engine.dialect.name
        self.auto_migrate = self.dialect == "sqlite" if auto_migrate is None else auto_migrate
        self._schema_ready = False
        self._lock = threading.Lock()
        self._bulk: Connection | None = None  # see _bulk_connection()
        self._bulk_lock = threading.Lock()
        #: First byte 1 while a write is in the driver without the GIL (the compiled
        #: PostgreSQL COPY sets and clears it); None where the driver does not tell.
        self.busy: bytearray | None = None
        #: Sends batches handed over by :meth:`send_ahead`, in order, on its own thread
        #: (the compiled PostgreSQL COPY); created with the kept connection.
        self._copier: Any = None
        if (self.dialect == "postgresql" and self.engine.driver == "psycopg"
                and _copy_text is not None and _pq_copy_in() is not None):
            self.busy = bytearray(1)

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

    def encode(self, batch: Sequence[PreparedRecord]) -> bytes | None:
        """What :meth:`write` would send for ``batch``, made ahead of the write.

        PostgreSQL: the COPY text of its rows (compiled encoder), so the pipeline's
        worker does that work and the store thread only sends it. ``None`` where there
        is nothing to do ahead (other stores, no compiled encoder, an unusual value).
        """
        if _copy_text is None or self.dialect != "postgresql" or self.engine.driver != "psycopg":
            return None
        try:
            return _copy_text([store_row(p) for p in batch])
        except Exception:  # a value the encoder refuses: write() finds and reports it
            return None

    def sends_ahead(self) -> bool:
        """Whether :meth:`send_ahead` may take batches: PostgreSQL with the compiled COPY,
        and :meth:`write` not replaced (a subclass or a wrapper of it sees every batch)."""
        return (self.busy is not None and type(self).write is _STOCK_WRITE
                and "write" not in vars(self))

    def send_ahead(self, encoded: bytes, *, resume: bool = False) -> Ahead | None:
        """Hand a batch's COPY text (what :meth:`encode` made) to the copier thread.

        The copier sends the batches handed to it one after the other, in order, on a
        thread that never waits for the GIL: the server goes from one batch to the next
        while Python threads are busy. Pass the ticket to :meth:`landed` for the
        outcome. The first failure halts the copier: the batches behind the failed one
        come back unsent, and it refuses new ones until ``resume`` (pass it only once
        every batch handed over before has been dealt with, or order is lost).

        None where it cannot take the batch (not :meth:`sends_ahead`, halted, the store
        unreachable): write it with :meth:`write`.
        """
        if not self.sends_ahead():
            return None
        with self._bulk_lock:  # the connection is not dropped while a batch is handed over
            try:
                self.ensure_schema()
                dbapi = self._bulk_connection()
            except (StoreError, SQLAlchemyError, OSError):
                return None  # the write that follows reports it
            ahead: Ahead | None = self._copier.submit(
                dbapi.pgconn.pgconn_ptr, _COPY_COMMAND, encoded, resume)
            return ahead

    def landed(self, batch: Sequence[PreparedRecord], ahead: Ahead) -> bool:
        """Wait for a batch handed to :meth:`send_ahead`: True once committed, False if it
        was never sent (write it with :meth:`write`). Raises :class:`StoreError` if it
        failed, classified as :meth:`write` classifies it (a replayed batch that
        collides with stored rows is merged, and has landed)."""
        failure = ahead.wait()
        if failure is None or failure is False:
            return failure is None
        assert isinstance(failure, tuple)
        exc = _copy_failure(*failure)
        with self._bulk_lock:
            if not _is_unique_violation(exc):
                raise self._postgres_error(exc) from exc
            try:
                self._merge_postgres(self._bulk_connection(), map(store_row, batch))
            except (SQLAlchemyError, OSError) as error:
                raise StoreError(f"store write failed: {error}") from error
        return True

    def write(self, batch: Sequence[PreparedRecord], *, encoded: bytes | None = None) -> None:
        """Write ``batch`` in one transaction. Raises :class:`StoreError` on failure.

        ``encoded``: what :meth:`encode` returned for this very batch.
        """
        if not batch:
            return
        self.ensure_schema()
        try:
            if self.dialect == "sqlite":
                self._write_sqlite(batch)
            elif self.dialect == "postgresql" and self.engine.driver == "psycopg":
                self._write_postgres(batch, encoded)
            else:
                self._write_generic(batch)
        except (DataError, SAIntegrityError) as exc:
            raise StoreError(f"store rejected the batch: {exc}", transient=False) from exc
        except SQLAlchemyError as exc:
            # a value the driver refuses to bind comes wrapped (StatementError)
            content = _content_error(getattr(exc, "orig", None))
            raise StoreError(f"store {'rejected the batch' if content else 'write failed'}: "
                             f"{exc}", transient=not content) from exc
        except OSError as exc:
            raise StoreError(f"store write failed: {exc}") from exc
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            # raised while building the rows (a value no row can hold): the content
            raise StoreError(f"store rejected a value: {exc!r}", transient=False) from exc

    def interrupt(self, *, wait: bool = True) -> None:
        """Cancel the statement running on the writer's connection; callable from any
        thread (shutdown past its deadline). The write then fails as transient.

        ``wait=False``: send the cancel request from a thread of its own and return at
        once (a PostgreSQL cancel opens a connection, which an unreachable server makes
        wait)."""
        conn = self._bulk
        if conn is None:
            return
        try:
            dbapi: Any = conn.connection.driver_connection
        except Exception:  # closed or invalidated meanwhile: nothing runs on it
            return
        if dbapi is None:
            return
        if wait:
            self._cancel(dbapi)
        else:  # the connection is taken now: the caller may forget it right after
            threading.Thread(target=self._cancel_quietly, args=(dbapi,), daemon=True,
                             name="otel-audit-cancel").start()

    def _cancel(self, dbapi: Any) -> None:
        if self.dialect == "sqlite":
            dbapi.interrupt()
        elif self.dialect == "postgresql" and self.engine.driver == "psycopg":
            cancel = getattr(dbapi, "cancel_safe", None)
            if cancel is not None:  # psycopg >= 3.2: a non-blocking cancel request
                cancel(timeout=2.0)
            else:  # pragma: no cover - older psycopg
                dbapi.cancel()

    def _cancel_quietly(self, dbapi: Any) -> None:
        try:
            self._cancel(dbapi)
        except Exception:  # the statement runs on; shutdown has returned anyway
            logger.debug("cannot cancel the store's statement", exc_info=True)

    # A batch is written on the writer's own connection, kept open between batches and
    # in autocommit mode: a batch that fits one statement (a multi-row INSERT on SQLite,
    # one COPY on PostgreSQL) is its own transaction, so the driver makes one trip to
    # the database per batch instead of checkout, BEGIN, write and COMMIT. Each trip
    # lets go of the GIL; fewer trips mean less waiting to get it back.

    def _bulk_connection(self) -> Any:
        """The driver connection of the writer's kept connection (opened on first use)."""
        conn = self._bulk
        if conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                if self.dialect == "postgresql":
                    # COPY sends timestamps as UTC text (the form the chain hashes)
                    conn.exec_driver_sql("SET TIME ZONE 'UTC'")
            except BaseException:
                conn.close()
                raise
            self._bulk = conn
            if self.busy is not None and self._copier is None:
                from .. import _pqcopy

                self._copier = _pqcopy.Copier()
        return conn.connection.driver_connection

    def _drop_bulk(self, timeout: float | None = None) -> None:
        """Forget the kept connection after a failure: the next batch opens a new one.

        The copier stops first: batches queued on it come back unsent. If its running
        batch does not end within ``timeout`` even once cancelled, the connection is
        left to it (never closed under a thread using it) and only forgotten here."""
        if self._copier is not None and not self._copier.halt(timeout):
            # a deadline: cancel without waiting for it; else give the cancel a moment
            self.interrupt(wait=timeout is None)
            if timeout is not None or not self._copier.halt(1.0):
                _INHERITED.append(self._bulk)  # still in use: never closed from here
                self._bulk = None
                return
        conn, self._bulk = self._bulk, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
            with contextlib.suppress(Exception):
                conn.close()

    def _write_sqlite(self, batch: Sequence[PreparedRecord]) -> None:
        rows = [store_row(p) for p in batch]
        if isinstance(self.engine.pool, StaticPool):
            # in-memory: one connection shared with every reader, left in its default mode
            with self.engine.begin() as conn:
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                try:
                    _sqlite_insert_rows(cursor, rows)
                except Exception as exc:
                    raise _wrap_dbapi_error(exc) from exc
                finally:
                    cursor.close()
            return
        with self._bulk_lock:
            try:
                cursor = self._bulk_connection().cursor()
                try:
                    if len(rows) <= _SQLITE_ROWS_PER_STATEMENT:  # one statement, autocommitted
                        _sqlite_insert_rows(cursor, rows)
                    else:
                        cursor.execute("BEGIN")
                        try:
                            _sqlite_insert_rows(cursor, rows)
                        except BaseException:
                            cursor.execute("ROLLBACK")
                            raise
                        cursor.execute("COMMIT")
                finally:
                    cursor.close()
            except SQLAlchemyError:
                self._drop_bulk()
                raise
            except Exception as exc:
                error = _wrap_dbapi_error(exc)
                if error.transient:  # the connection may be what failed: start afresh
                    self._drop_bulk()
                raise error from exc

    def _write_postgres(self, batch: Sequence[PreparedRecord], encoded: bytes | None) -> None:
        with self._bulk_lock:
            try:
                dbapi = self._bulk_connection()
                if self._copier is not None:
                    self._copier.settle()  # batches handed over before go first
                copy_in = _pq_copy_in()
                if copy_in is not None and encoded is not None:  # COPY text, one GIL release
                    try:
                        failure = copy_in(dbapi.pgconn.pgconn_ptr, _COPY_COMMAND, encoded,
                                          self.busy)
                    except (ValueError, TypeError) as exc:  # the connection is not usable
                        raise _ConnectionUnusable(str(exc)) from exc
                    if failure is not None:
                        raise _copy_failure(*failure)
                else:
                    with dbapi.cursor() as cursor, cursor.copy(_COPY) as copy:
                        if encoded is not None:
                            copy.write(encoded)  # rows already in COPY text form
                        else:
                            for prepared in batch:
                                copy.write_row(store_row(prepared))
            except SQLAlchemyError:
                self._drop_bulk()
                raise
            except Exception as exc:  # psycopg errors raised inside COPY are not wrapped
                if _is_unique_violation(exc):
                    self._merge_postgres(dbapi, map(store_row, batch))
                    return
                raise self._postgres_error(exc) from exc

    def _merge_postgres(self, dbapi: Any, rows: Iterable[tuple[Any, ...]]) -> None:
        """Replay path: stage the batch, then insert only what is not stored yet."""
        try:
            with dbapi.transaction(), dbapi.cursor() as cursor:
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
        except Exception as exc:
            raise self._postgres_error(exc) from exc

    def _postgres_error(self, exc: Exception) -> StoreError:
        """Classify a psycopg error; a transient one may be the connection: drop it.

        Content errors: SQLSTATE classes 22 (data exception: a value out of range,
        invalid text or JSON) and 23 (integrity), and what the driver raises on our side
        for a value it cannot send (psycopg's DataError, Python's TypeError/ValueError/
        OverflowError from a dumper)."""
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        permanent = sqlstate.startswith(("22", "23")) or (not sqlstate and _content_error(exc))
        if not permanent:
            self._drop_bulk()
        return StoreError(f"store write failed: {exc}", transient=not permanent)

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
                row = dict(zip(ROW_COLUMNS, _typed_params(p), strict=True))
                for name in JSON_FIELDS:
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
        values = ", ".join([placeholder] * len(ROW_COLUMNS))
        if self.dialect == "sqlite":
            sql = f"INSERT OR IGNORE INTO audit_trails ({_COLUMN_LIST}) VALUES ({values})"
        elif self.dialect == "postgresql":
            sql = (f"INSERT INTO audit_trails ({_COLUMN_LIST}) VALUES ({values}) "
                   "ON CONFLICT DO NOTHING")
        else:
            raise StoreError(f"the transactional outbox does not support {self.dialect}",
                             transient=False)
        rows = [store_row(p) if self.dialect == "sqlite" else _typed_params(p) for p in batch]
        try:
            connection.exec_driver_sql(sql, rows)
        except (DataError, SAIntegrityError) as exc:
            raise StoreError(f"store rejected the batch: {exc}", transient=False) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    def dispose(self, *, close: bool = True, timeout: float | None = None) -> None:
        """Release pooled connections (``close=False`` after fork: do not touch the parent's).

        ``timeout``: how long to wait for a write in progress (None: as long as it
        takes); past it the write's statement is cancelled and its connection left to
        the thread running it."""
        if close:
            # not while a batch is being written or handed to the copier
            if self._bulk_lock.acquire(timeout=-1 if timeout is None else timeout):
                try:
                    self._drop_bulk(timeout)
                finally:
                    self._bulk_lock.release()
            else:
                self.interrupt(wait=False)
        else:
            # after fork the kept connection is the parent's: never close it from here,
            # not even by garbage collection (that would end the parent's session); and
            # a lock a parent's thread held at fork time would stay held here forever
            if self._bulk is not None:
                _INHERITED.append(self._bulk)
                self._bulk = None
            if self._copier is not None:  # its thread runs in the parent only
                _INHERITED.append(self._copier)
                self._copier = None
            self._bulk_lock = threading.Lock()
            self._lock = threading.Lock()
        self.engine.dispose(close=close)


#: Connections (and copiers) inherited across fork, kept referenced so the child never
#: closes them.
_INHERITED: list[Any] = []

_STOCK_WRITE = StoreWriter.write


def _wrap_dbapi_error(exc: Exception) -> StoreError:
    """Classify a raw driver error: the content (a value the store or its driver refuses)
    or anything else (a lock, the connection: transient)."""
    permanent = _content_error(exc)
    return StoreError(f"store {'rejected the batch' if permanent else 'write failed'}: {exc}",
                      transient=not permanent)


class _ConnectionUnusable(Exception):
    """The compiled COPY refused the connection's state (closed, not idle): transient."""


#: DB-API error classes raised for a value (PEP 249: DataError, IntegrityError; sqlite3
#: raises ProgrammingError/InterfaceError for a parameter it cannot bind).
_CONTENT_CLASSES = frozenset({"DataError", "IntegrityError", "ProgrammingError",
                              "InterfaceError"})


def _content_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` was raised for the content of the rows rather than the store's
    state: retrying the same rows cannot help, isolating them can."""
    if exc is None or isinstance(exc, _ConnectionUnusable):
        return False
    if isinstance(exc, TypeError | ValueError | OverflowError | RecursionError):
        return True  # OverflowError: an integer past the column; ValueError: bad text
    if type(exc).__name__ not in _CONTENT_CLASSES:
        return False
    # sqlite3 raises ProgrammingError for a closed connection too: that is its state
    return "closed" not in str(exc).lower()


def _is_unique_violation(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == "23505"
