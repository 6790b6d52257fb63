"""Where the chained rows lie in the ``(stream, seq)`` index, found by seeks.

The stream names (the next name after the last one), each stream's first and last
``seq``, the rows with no stream or no seq (which sort first): a few index seeks a
stream, on SQLite and PostgreSQL alike, instead of a pass over the whole index or table.
"""

from __future__ import annotations

__all__ = ["MAX_SEQ", "NAMES", "NO_STREAM_OR_SEQ_SQL", "STREAM_ENDS_SQL", "UNCHAINED",
           "MalformedSeq"]

#: The largest seq SQLite and PostgreSQL store (BIGINT).
MAX_SEQ = (1 << 63) - 1


#: The stream names, found by one seek a stream in the (stream, seq) index (the next
#: name after the last one) instead of a pass over the whole index: on both databases.
NAMES = (
    "WITH RECURSIVE names(name) AS (SELECT MIN(stream) FROM audit_trails UNION ALL "
    "SELECT (SELECT MIN(stream) FROM audit_trails WHERE stream > names.name) FROM names "
    "WHERE names.name IS NOT NULL) ")
#: Each stream's first and last seq (two more seeks a stream).
STREAM_ENDS_SQL = (
    f"{NAMES}SELECT name, (SELECT MIN(seq) FROM audit_trails WHERE stream = name), "
    "(SELECT MAX(seq) FROM audit_trails WHERE stream = name) "
    "FROM names WHERE name IS NOT NULL ORDER BY name")
#: The most rows of no chain :meth:`.sources.StoreSource.unchained` names.
UNCHAINED = 1000
#: The rows with no stream, or a stream and no seq (seeks where those sort first).
NO_STREAM_OR_SEQ_SQL = (
    f"{NAMES}SELECT id FROM audit_trails WHERE stream IS NULL UNION ALL "
    "SELECT t.id FROM names JOIN audit_trails t ON t.stream = names.name "
    f"AND t.seq IS NULL LIMIT {UNCHAINED + 1}")


class MalformedSeq(Exception):
    """A stream's first or last ``seq`` is not an integer (SQLite stores any value in any
    column): its rows cannot be cut into seq ranges."""
