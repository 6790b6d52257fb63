"""Reading PostgreSQL's chain rows as COPY text: ``COPY (SELECT ...) TO STDOUT`` through
psycopg's public ``cursor.copy()``, parsed by :func:`~.copyparse.copy_rows` into the values
the driver's fetch would give, without the driver building each column of each row
(:class:`~.sources.StoreSource` uses it for verify's walk).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import IntegrityError
from .copyparse import COMPILED, copy_rows

__all__ = ["COPY_BATCH", "COPY_TEXT", "copied_rows", "copy_kinds"]

#: Rows of COPY text read before they are parsed and verified: few enough that
#: PostgreSQL goes on writing the next ones into the socket's buffer meanwhile.
COPY_BATCH = 2_000

#: PostgreSQL's types whose values the driver reads as ``int`` and as ``str`` (int2,
#: int4, int8; text, varchar, bpchar, name), by type OID: a result of other types is
#: read by the driver.
INT_OIDS = frozenset((20, 21, 23))
TEXT_OIDS = frozenset((19, 25, 1042, 1043))
#: Whether verify reads PostgreSQL's rows as COPY text: where :func:`copy_rows` is
#: compiled (the pure-Python form is slower than the driver's fetch).
COPY_TEXT = COMPILED


def copy_kinds(conn: Any, sql: str, params: list[Any]) -> bytes | None:
    """The :func:`~.copyparse.copy_rows` kinds of the columns of ``sql`` (PostgreSQL,
    psycopg), or ``None`` when its rows are read through the driver: a column of another
    type, a client encoding other than UTF-8 (COPY text is in the client encoding),
    another driver, or no compiled :func:`copy_rows` (:data:`COPY_TEXT`)."""
    info = getattr(conn, "info", None)
    if (not COPY_TEXT or getattr(info, "encoding", None) != "utf-8"
            or not hasattr(conn, "cursor")):
        return None
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0", params)
        types = [column.type_code for column in cursor.description or ()]
    if not types or not all(t in INT_OIDS or t in TEXT_OIDS for t in types):
        return None
    return bytes(b"i"[0] if t in INT_OIDS else b"t"[0] for t in types)




def copied_rows(conn: Any, sql: str, params: list[Any],
                 kinds: bytes, order: tuple[int, ...]) -> Iterator[list[tuple[Any, ...]]]:
    """Source rows from ``sql`` (the chain row and the format tag) read with ``COPY (sql)
    TO STDOUT`` and :func:`~.copyparse.copy_rows`: the values the driver would give
    (``str``, ``int``, ``None``), ``HEADER`` first, in lists of about ``COPY_BATCH``
    rows."""
    # one growing buffer, not a list of the driver's blocks: a block is a memoryview,
    # which the cycle collector tracks (thousands kept alive make it walk them all)
    data = bytearray()
    count = 0
    with conn.cursor() as cursor, cursor.copy(f"COPY ({sql}) TO STDOUT", params) as copy:
        for block in copy:
            data += block
            count += 1
            if count >= COPY_BATCH:  # PostgreSQL sends a row a message
                count = 0
                rows = _parsed(data, kinds, order)
                if rows:
                    yield rows
    rows = _parsed(data, kinds, order)
    if data:
        raise IntegrityError("PostgreSQL's COPY text ended inside a row")
    if rows:
        yield rows


def _parsed(data: bytearray, kinds: bytes, order: tuple[int, ...]) -> list[tuple[Any, ...]]:
    """The complete rows at the start of ``data``, taken out of it."""
    try:
        rows, used = copy_rows(data, kinds, order)
    except ValueError as exc:  # not what PostgreSQL writes for these columns
        raise IntegrityError(f"cannot read PostgreSQL's COPY text: {exc}") from exc
    del data[:used]
    return rows
