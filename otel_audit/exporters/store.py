"""What the store exporters share: the kept connection, error classification, the
exporter answer built from a write's outcome.

A batch is written on the exporter's own connection, kept open between batches and in
autocommit mode: a batch that fits one statement (a multi-row INSERT on SQLite, one COPY
on PostgreSQL) is its own transaction, so the driver makes one trip to the database per
batch instead of checkout, BEGIN, write and COMMIT.

An exporter also tells whether the batch it just wrote went in whole, no row skipped as
a duplicate of one stored before (:meth:`StoreExporter.stored_all`): the driver says so
at no cost (a COPY that succeeded; the rows an ``INSERT OR IGNORE`` changed), and the
chain's duplicate check then needs no query of its own for that batch.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import threading
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from ..errors import StoreError
from ..prepared import PreparedRecord, store_row
from ..store.schema import ROW_COLUMNS
from .base import AuditExporter, ExportResult

__all__ = ["COLUMN_LIST", "BatchStream", "StoreExporter", "content_error", "store_rows",
           "typed_params", "wrap_dbapi_error"]

logger = logging.getLogger("otel_audit.store")

COLUMN_LIST = ", ".join(ROW_COLUMNS)

_TS = ROW_COLUMNS.index("timestamp")
_REVIEW, _SUCCESS = ROW_COLUMNS.index("requires_review"), ROW_COLUMNS.index("success")

#: Connections inherited across fork, kept referenced so the child never closes them
#: (that would end the parent's session).
INHERITED: list[Any] = []


_ROW = operator.itemgetter(PreparedRecord._fields.index("row"))


def store_rows(batch: Sequence[PreparedRecord]) -> list[tuple[Any, ...]]:
    """The store rows of ``batch`` (:func:`~otel_audit.prepared.store_row` of each): the
    rows the chain sealer kept, in one C-level pass, unless one must be built."""
    rows: list[tuple[Any, ...]] = list(map(_ROW, batch))
    if None in rows:
        rows = [store_row(p) for p in batch]
    return rows


class BatchStream(Protocol):
    """One batch written as it is prepared (:meth:`StoreExporter.stream`): its records
    sent a part at a time, committed at the end, or abandoned (nothing of it stored)."""

    def send(self, part: Sequence[PreparedRecord]) -> None:
        """Send the next records of the batch (sealed, in order)."""

    def commit(self, batch: Sequence[PreparedRecord]) -> None:
        """End the batch (``batch``: every record sent) and commit it."""

    def abort(self, exc: BaseException) -> None:
        """Give the batch up: nothing of it is stored. Never raises."""


def typed_params(prepared: PreparedRecord) -> tuple[Any, ...]:
    """The store row as typed parameters: an aware ``datetime`` (a session may be in any
    time zone) and booleans (PostgreSQL does not cast 0/1 parameters)."""
    row = list(store_row(prepared))
    record = prepared.record
    row[_TS], row[_REVIEW], row[_SUCCESS] = record.timestamp, record.requires_review, record.success
    return tuple(row)


#: DB-API error classes raised for a value (PEP 249: DataError, IntegrityError; sqlite3
#: raises ProgrammingError/InterfaceError for a parameter it cannot bind).
_CONTENT_CLASSES = frozenset({"DataError", "IntegrityError", "ProgrammingError",
                              "InterfaceError"})


def content_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` was raised for the content of the rows rather than the store's
    state: retrying the same rows cannot help, isolating them can."""
    if exc is None:
        return False
    if isinstance(exc, TypeError | ValueError | OverflowError | RecursionError):
        return True  # OverflowError: an integer past the column; ValueError: bad text
    if type(exc).__name__ not in _CONTENT_CLASSES:
        return False
    # sqlite3 raises ProgrammingError for a closed connection too: that is its state
    return "closed" not in str(exc).lower()


def wrap_dbapi_error(exc: Exception) -> StoreError:
    """Classify a raw driver error: the content (a value the store or its driver refuses)
    or anything else (a lock, the connection: transient)."""
    permanent = content_error(exc)
    return StoreError(f"store {'rejected the batch' if permanent else 'write failed'}: {exc}",
                      transient=not permanent)


class StoreExporter(AuditExporter):
    """An exporter writing to a database through ``engine`` (one per dialect)."""

    #: Written on the pipeline's worker: where the database works in a process of its
    #: own, the driver waits for it without the GIL and the application's threads run
    #: meanwhile; a store thread only waiting there cost more in hand-offs than it
    #: saved (docs/performance.md, throughput). SQLite differs (see its exporter).
    own_thread: ClassVar[bool] = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._bulk: Connection | None = None  # see bulk_connection()
        self._bulk_lock = threading.Lock()
        self._whole = threading.local()  # see stored_all()

    # ------------------------------------------------------------ the contract

    def export(self, batch: Sequence[PreparedRecord]) -> ExportResult:
        """Write ``batch`` in one transaction (see :meth:`write`)."""
        try:
            self.write(batch)
        except StoreError as exc:
            if exc.transient:
                return ExportResult.retryable(exc)
            return ExportResult.rejected(exc)
        return ExportResult.SUCCESS

    def shutdown(self, timeout_millis: int = 30_000) -> bool:
        """Close the kept connection, waiting up to the timeout for a write in progress."""
        return self.close(timeout_millis / 1000)

    # ----------------------------------------------------------------- writes

    def write(self, batch: Sequence[PreparedRecord], *, encoded: bytes | None = None) -> None:
        """Write ``batch`` in one transaction. Raises :class:`StoreError` on failure,
        ``transient=False`` when the batch's content is what the store refused."""
        if not batch:
            return
        self._whole.batch = None
        try:
            self._write(batch, encoded)
        except (DataError, SAIntegrityError) as exc:
            raise StoreError(f"store rejected the batch: {exc}", transient=False) from exc
        except SQLAlchemyError as exc:
            # a value the driver refuses to bind comes wrapped (StatementError)
            content = content_error(getattr(exc, "orig", None))
            raise StoreError(f"store {'rejected the batch' if content else 'write failed'}: "
                             f"{exc}", transient=not content) from exc
        except OSError as exc:
            raise StoreError(f"store write failed: {exc}") from exc
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            # raised while building the rows (a value no row can hold): the content
            raise StoreError(f"store rejected a value: {exc!r}", transient=False) from exc

    @abstractmethod
    def _write(self, batch: Sequence[PreparedRecord], encoded: bytes | None) -> None:
        """Write ``batch``; raise the driver's or SQLAlchemy's error. Call
        :meth:`_stored` once it is committed, where the driver tells how many rows
        went in."""

    def _stored(self, batch: Sequence[PreparedRecord], rows: int) -> None:
        """Note that the write of ``batch`` (this very object) stored ``rows`` rows."""
        self._whole.batch = batch if rows == len(batch) else None

    def stored_all(self, batch: Sequence[PreparedRecord]) -> bool:
        """Whether the last :meth:`write` on this thread was of this very ``batch`` and
        stored every row of it (none skipped as already stored). False whenever this
        is not known: the caller then looks in the store. Answers True once: the
        exporter then lets go of the batch."""
        if getattr(self._whole, "batch", None) is not batch:
            return False
        self._whole.batch = None
        return True

    def encode(self, batch: Sequence[PreparedRecord]) -> bytes | None:
        """What :meth:`write` would send for ``batch``, made ahead on the worker; None
        where nothing is made ahead."""
        return None

    def stream(self) -> BatchStream | None:
        """A batch written as it is prepared, so that the database works on its first
        records while the worker prepares the next ones; None where the store has no
        such write (the batch is then prepared whole, then written). Raises the driver's
        error if it cannot start."""
        return None

    def write_on(self, connection: Connection, batch: Sequence[PreparedRecord]) -> None:
        """Insert ``batch`` inside the caller's transaction on ``connection`` (no commit);
        idempotent on ``id``. Not every store supports it."""
        raise StoreError(f"the transactional outbox does not support {self.engine.dialect.name}",
                         transient=False)

    def _outbox(self, connection: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._whole.batch = None  # committed or not with the caller's transaction
        try:
            connection.exec_driver_sql(sql, rows)
        except (DataError, SAIntegrityError) as exc:
            raise StoreError(f"store rejected the batch: {exc}", transient=False) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    # ---------------------------------------------------- the kept connection

    def _connection_setup(self, conn: Connection) -> None:
        """Settings the kept connection needs (run once, when it opens)."""

    def bulk_connection(self) -> Any:
        """The driver connection of the kept connection (opened on first use)."""
        conn = self._bulk
        if conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                self._connection_setup(conn)
            except BaseException:
                conn.close()
                raise
            self._bulk = conn
        return conn.connection.driver_connection

    def drop_bulk(self) -> None:
        """Forget the kept connection after a failure: the next batch opens a new one."""
        conn, self._bulk = self._bulk, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
            with contextlib.suppress(Exception):
                conn.close()

    def interrupt(self, *, wait: bool = True) -> None:
        """Cancel the statement running on the kept connection; callable from any
        thread (shutdown past its deadline). The write then fails as transient.

        ``wait=False``: send the cancel from a thread of its own and return at once
        (a PostgreSQL cancel opens a connection, which an unreachable server makes
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
        """Cancel what runs on ``dbapi`` (the driver's own way)."""

    def _cancel_quietly(self, dbapi: Any) -> None:
        try:
            self._cancel(dbapi)
        except Exception:  # the statement runs on; shutdown has returned anyway
            logger.debug("cannot cancel the store's statement", exc_info=True)

    def close(self, timeout: float | None = None) -> bool:
        """Close the kept connection once no write is in progress (waiting up to
        ``timeout``, None: as long as it takes); past it, cancel the write and leave
        its connection to the thread running it. True if closed."""
        if self._bulk_lock.acquire(timeout=-1 if timeout is None else timeout):
            try:
                self.drop_bulk()
            finally:
                self._bulk_lock.release()
            return True
        self.interrupt(wait=False)
        return False

    def forget_after_fork(self) -> None:
        """In a forked child: never close the parent's connection from here (not even by
        garbage collection), and replace a lock a parent's thread may have held."""
        if self._bulk is not None:
            INHERITED.append(self._bulk)
            self._bulk = None
        self._bulk_lock = threading.Lock()
