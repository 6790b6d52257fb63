"""PostgreSQL (psycopg 3): ``COPY ... FROM STDIN`` straight into the table through
psycopg's public API (``cursor.copy()``, ``copy.write()``).

The COPY text of a batch is made ahead, on the pipeline's worker, by the compiled encoder
where it is built (:meth:`PostgresExporter.encode`); otherwise psycopg formats each row
(``copy.write_row``). If the batch collides with rows already stored (a replay), it is
copied into a temporary staging table and merged with ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING``: replaying a batch never duplicates a row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from ..prepared import PreparedRecord, store_row
from ..store.schema import ROW_COLUMNS
from .store import (
    COLUMN_LIST,
    BatchStream,
    StoreExporter,
    content_error,
    store_rows,
    typed_params,
)

__all__ = ["PostgresExporter"]

_COPY = f"COPY audit_trails ({COLUMN_LIST}) FROM STDIN"

_copy_text: Callable[[list[tuple[Any, ...]]], bytes] | None
try:  # the compiled COPY text encoder (optional: built where a C compiler is)
    from .._accel import copy_text as _copy_text
except ImportError:  # pragma: no cover - depends on the build
    _copy_text = None


def _send(copy: Any, batch: Sequence[PreparedRecord], encoded: bytes | None) -> None:
    """Send ``batch``'s rows into ``copy``: ``encoded`` (their COPY text, made by
    :meth:`PostgresExporter.encode`) when there is one, else row by row through
    psycopg's ``write_row`` (no compiled encoder, or a value it refuses)."""
    if encoded is not None:
        copy.write(encoded)
    else:
        for row in store_rows(batch):
            copy.write_row(row)


def _is_unique_violation(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == "23505"


class PostgresExporter(StoreExporter):
    """Writes batches to PostgreSQL through psycopg 3's COPY; idempotent on ``id``."""

    def encode(self, batch: Sequence[PreparedRecord]) -> bytes | None:
        """The COPY text of ``batch``'s rows (compiled encoder), so the pipeline's worker
        does that work and the store thread only sends it; None without the encoder or
        for a value it refuses (:meth:`write` then finds and reports it)."""
        if _copy_text is None:
            return None
        try:
            return _copy_text(store_rows(batch))
        except Exception:
            return None

    def stream(self) -> BatchStream | None:
        """One COPY for the batch, its rows sent as the worker seals them: the server
        parses and indexes the first ones while the next are prepared (see
        :class:`CopyStream`)."""
        return CopyStream(self)

    def _connection_setup(self, conn: Connection) -> None:
        # COPY sends timestamps as UTC text (the form the chain hashes)
        conn.exec_driver_sql("SET TIME ZONE 'UTC'")

    def _write(self, batch: Sequence[PreparedRecord], encoded: bytes | None) -> None:
        with self._bulk_lock:
            try:
                dbapi = self.bulk_connection()
                with dbapi.cursor() as cursor, cursor.copy(_COPY) as copy:
                    _send(copy, batch, encoded)
            except SQLAlchemyError:
                self.drop_bulk()
                raise
            except Exception as exc:  # psycopg errors raised inside COPY are not wrapped
                if _is_unique_violation(exc):
                    self._stored(batch, self._merge(dbapi, map(store_row, batch)))
                    return
                raise self._error(exc) from exc
            self._stored(batch, len(batch))  # a COPY stores every row or none

    def _merge(self, dbapi: Any, rows: Iterable[tuple[Any, ...]]) -> int:
        """Replay path: stage the batch, then insert only what is not stored yet;
        returns how many rows went in."""
        try:
            with dbapi.transaction(), dbapi.cursor() as cursor:
                cursor.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS _otel_audit_stage "
                    "(LIKE audit_trails INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
                with cursor.copy(f"COPY _otel_audit_stage ({COLUMN_LIST}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cursor.execute(
                    f"INSERT INTO audit_trails ({COLUMN_LIST}) "
                    f"SELECT {COLUMN_LIST} FROM _otel_audit_stage ON CONFLICT DO NOTHING"
                )
                inserted: int = cursor.rowcount
        except Exception as exc:
            raise self._error(exc) from exc
        return inserted

    def _error(self, exc: Exception) -> StoreError:
        """Classify a psycopg error; a transient one may be the connection: drop it.

        Content errors: SQLSTATE classes 22 (data exception: a value out of range,
        invalid text or JSON) and 23 (integrity), and what the driver raises on our side
        for a value it cannot send (psycopg's DataError, Python's TypeError/ValueError/
        OverflowError from a dumper)."""
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        permanent = sqlstate.startswith(("22", "23")) or (not sqlstate and content_error(exc))
        if not permanent:
            self.drop_bulk()
        return StoreError(f"store write failed: {exc}", transient=not permanent)

    def write_on(self, connection: Connection, batch: Sequence[PreparedRecord]) -> None:
        """``INSERT ... ON CONFLICT DO NOTHING`` inside the caller's transaction (a COPY
        conflict would abort it)."""
        values = ", ".join(["%s"] * len(ROW_COLUMNS))
        self._outbox(connection, f"INSERT INTO audit_trails ({COLUMN_LIST}) VALUES ({values}) "
                                 "ON CONFLICT DO NOTHING", [typed_params(p) for p in batch])

    def _cancel(self, dbapi: Any) -> None:
        cancel = getattr(dbapi, "cancel_safe", None)
        if cancel is not None:  # psycopg >= 3.2: a non-blocking cancel request
            cancel(timeout=2.0)
        else:  # pragma: no cover - older psycopg
            dbapi.cancel()


class CopyStream:
    """A batch's COPY sent a part at a time as the worker prepares it; committed (the
    kept connection is in autocommit: the COPY is the batch's transaction) by
    :meth:`commit`. Holds the exporter's connection lock from creation to
    :meth:`commit` or :meth:`abort`. A failure raises :class:`StoreError` (classified
    as :meth:`PostgresExporter.write` does) and leaves nothing stored; the pipeline then
    writes the batch the usual way (a retry, a replay's merge, the isolation of a
    refused record)."""

    def __init__(self, exporter: PostgresExporter) -> None:
        self._exporter = exporter
        self._stack = contextlib.ExitStack()
        exporter._bulk_lock.acquire()
        try:
            exporter._whole.batch = None
            dbapi = exporter.bulk_connection()
            cursor = self._stack.enter_context(dbapi.cursor())
            self._copy = self._stack.enter_context(cursor.copy(_COPY))
        except BaseException as exc:
            error = exporter._error(exc) if isinstance(exc, Exception) else None
            self.abort(exc)
            if error is None:
                raise
            raise error from exc

    def send(self, part: Sequence[PreparedRecord]) -> None:
        """Send the COPY text of ``part``'s rows (psycopg's ``write_row`` without the
        compiled encoder, or for a value it refuses)."""
        try:
            _send(self._copy, part, self._exporter.encode(part))
        except Exception as exc:
            raise self._exporter._error(exc) from exc

    def commit(self, batch: Sequence[PreparedRecord]) -> None:
        """End the COPY: the batch commits (every row or none)."""
        exporter = self._exporter
        try:
            self._stack.close()
        except BaseException as exc:
            error = exporter._error(exc) if isinstance(exc, Exception) else None
            self._release(failed=True)
            if error is None:
                raise
            raise error from exc
        exporter._stored(batch, len(batch))
        self._release(failed=False)

    def abort(self, exc: BaseException) -> None:
        """End the COPY with an error (the server rolls it back); never raises."""
        try:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException:  # the connection's state is not known: drop it
            self._release(failed=True)
        else:
            self._release(failed=False)

    def _release(self, *, failed: bool) -> None:
        exporter, self._exporter = self._exporter, None  # type: ignore[assignment]
        if exporter is None:  # released already
            return
        try:
            if failed:  # the next batch opens a new connection
                exporter.drop_bulk()
        finally:
            exporter._bulk_lock.release()
