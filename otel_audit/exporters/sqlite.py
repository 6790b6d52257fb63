"""SQLite: multi-row ``INSERT OR IGNORE`` statements straight through the driver (WAL
mode, ``synchronous=NORMAL``, a busy timeout: see
:func:`~otel_audit.store.writer.create_store_engine`)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any, ClassVar

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ..prepared import PreparedRecord, store_row
from ..store.schema import ROW_COLUMNS
from .store import COLUMN_LIST, StoreExporter, store_rows, wrap_dbapi_error

__all__ = ["SQLiteExporter", "python_sqlite_params"]

# SQLite binds at most 32,766 parameters per statement (999 before 3.32)
_SQLITE_MAX_PARAMS = 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999
ROWS_PER_STATEMENT = min(512, _SQLITE_MAX_PARAMS // len(ROW_COLUMNS))


@functools.lru_cache(maxsize=256)
def _sqlite_insert(kept: tuple[int, ...], rows: int) -> str:
    one = "(" + ", ".join("?" * len(kept)) + ")"
    values = ", ".join([one] * rows)
    names = ", ".join(ROW_COLUMNS[i] for i in kept)
    return f"INSERT OR IGNORE INTO audit_trails ({names}) VALUES {values}"


def python_sqlite_params(rows: list[tuple[Any, ...]]) -> tuple[tuple[int, ...], list[Any]]:
    """The positions of the columns not NULL in every row, and their values row after
    row (the compiled ``sqlite_params`` does the same in one pass)."""
    columns = list(zip(*rows, strict=True))
    kept = tuple(i for i, column in enumerate(columns) if column.count(None) != len(column))
    return kept, list(chain.from_iterable(zip(*(columns[i] for i in kept), strict=True)))


_sqlite_params: Callable[[list[tuple[Any, ...]]], tuple[tuple[int, ...], list[Any]]]
try:  # compiled (optional: built where a C compiler is)
    from .._accel import sqlite_params as _sqlite_params
except ImportError:  # pragma: no cover - depends on the build
    _sqlite_params = python_sqlite_params


def insert_rows(cursor: Any, rows: Sequence[tuple[Any, ...]]) -> int:
    """Multi-row VALUES straight through the driver: one statement step per chunk
    instead of one per row, and none of SQLAlchemy's per-row parameter handling.
    Returns how many rows went in (``INSERT OR IGNORE`` skips an ``id`` stored before).

    Columns NULL in every row of a chunk are left out of its statement (they default
    to NULL): the driver binds a NULL parameter through its adapter lookup, which
    costs more than a string's, with the GIL held.
    """
    inserted = 0
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = list(rows[start:start + ROWS_PER_STATEMENT])
        kept, params = _sqlite_params(chunk)
        cursor.execute(_sqlite_insert(kept, len(chunk)), params)
        inserted += cursor.rowcount
    return inserted


class SQLiteExporter(StoreExporter):
    """Writes batches to a SQLite store; idempotent on ``id`` (``INSERT OR IGNORE``)."""

    #: SQLite's insert is CPU work in this process, done without the GIL: on a thread of
    #: its own it runs on another core while the worker prepares the next batch, which
    #: measured faster than the same work on the worker (docs/performance.md).
    own_thread: ClassVar[bool] = True

    def _write(self, batch: Sequence[PreparedRecord], encoded: bytes | None) -> None:
        rows = store_rows(batch)
        if isinstance(self.engine.pool, StaticPool):
            # in-memory: one connection shared with every reader, left in its default mode
            with self.engine.begin() as conn:
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                try:
                    inserted = insert_rows(cursor, rows)
                except Exception as exc:
                    raise wrap_dbapi_error(exc) from exc
                finally:
                    cursor.close()
            self._stored(batch, inserted)
            return
        with self._bulk_lock:
            try:
                cursor = self.bulk_connection().cursor()
                try:
                    if len(rows) <= ROWS_PER_STATEMENT:  # one statement, autocommitted
                        inserted = insert_rows(cursor, rows)
                    else:
                        cursor.execute("BEGIN")
                        try:
                            inserted = insert_rows(cursor, rows)
                        except BaseException:
                            cursor.execute("ROLLBACK")
                            raise
                        cursor.execute("COMMIT")
                finally:
                    cursor.close()
                self._stored(batch, inserted)
            except SQLAlchemyError:
                self.drop_bulk()
                raise
            except Exception as exc:
                error = wrap_dbapi_error(exc)
                if error.transient:  # the connection may be what failed: start afresh
                    self.drop_bulk()
                raise error from exc

    def write_on(self, connection: Connection, batch: Sequence[PreparedRecord]) -> None:
        """``INSERT OR IGNORE`` inside the caller's transaction (no commit)."""
        values = ", ".join(["?"] * len(ROW_COLUMNS))
        self._outbox(connection,
                     f"INSERT OR IGNORE INTO audit_trails ({COLUMN_LIST}) VALUES ({values})",
                     [store_row(p) for p in batch])

    def _cancel(self, dbapi: Any) -> None:
        dbapi.interrupt()
