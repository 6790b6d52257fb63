"""The read-only guard of ``AuditAnalytics``: a locked DuckDB and a statement check.

Two independent locks, so that neither alone has to be perfect:

1. :func:`lock_down` uses DuckDB's own switches once the store is attached and the
   scanner extensions are loaded: no external access (no file read or written outside
   the Parquet archives and a private spill directory, no ``ATTACH``/``LOAD``/
   ``INSTALL``), no extension auto-loading, no Python replacement scans (a query never
   sees the caller's variables) and a locked configuration (``SET`` can undo none of it).
2. :func:`checked_query` parses every query with DuckDB's own parser before it runs:
   exactly one statement, a ``SELECT`` (or ``EXPLAIN [ANALYZE]`` of one), and every
   table function in it, however deeply nested (CTEs, subqueries, ``EXPLAIN``), on an
   allow-list. A name deny-list would miss the next extension's functions; the
   scanners' ``postgres_execute``/``postgres_query``/``postgres_scan``/``sqlite_scan``
   ignore the external-access switch (they use the attached connection or open their
   own), so they must never be callable at all.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb

from ..errors import QueryError, QueryRefusedError

__all__ = ["FILE_TABLE_FUNCTIONS", "READABLE_TABLE_FUNCTIONS", "checked_query", "lock_down"]

#: Table functions a query may call: generators, JSON/metadata helpers, and the Parquet
#: readers (whose paths DuckDB itself confines to the archive directory).
READABLE_TABLE_FUNCTIONS = frozenset({
    "generate_series", "range", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "histogram", "histogram_values", "summary",
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema",
    "parquet_file_metadata", "parquet_kv_metadata",
    "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_functions",
    "duckdb_indexes", "duckdb_keywords", "duckdb_schemas", "duckdb_settings", "duckdb_tables",
    "duckdb_types", "duckdb_views", "pragma_table_info", "pragma_show", "pragma_version",
    "pg_timezone_names", "icu_calendar_names",
})

#: The allow-listed table functions that read files: a scoped analytics refuses them, as
#: the archives hold every team's records (its view applies the scope to them instead).
FILE_TABLE_FUNCTIONS = frozenset({
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema",
    "parquet_file_metadata", "parquet_kv_metadata",
})

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# EXPLAIN is not serialisable by DuckDB's parser API, so its prefix is read here and the
# statement behind it is checked like any other; comments may precede either keyword.
# (one whitespace character per repetition: ``\s+`` inside ``*`` backtracks exponentially)
_SKIP = r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*"
_EXPLAIN = re.compile(_SKIP + r"explain\b" + _SKIP + r"(?:(analy[sz]e)\b)?",
                      re.IGNORECASE | re.DOTALL)


def lock_down(con: duckdb.DuckDBPyConnection, *, readable: Sequence[Path],
              spill_dir: Path) -> None:
    """Lock ``con`` for reading: call after attaching the store and loading extensions.

    ``readable`` are the directories whose files queries may read (the Parquet
    archives); ``spill_dir`` is where DuckDB may spill large sorts and joins (a private
    directory: spilled pages hold audit data). Nothing can be unlocked afterwards.
    """
    # a trailing separator, so that /var/archive does not also allow /var/archive-old
    allowed = [os.path.join(path.resolve(), "") for path in readable]
    settings: list[tuple[str, Any]] = [
        ("allowed_directories", allowed),
        ("temp_directory", str(spill_dir)),
        ("autoinstall_known_extensions", False),
        ("autoload_known_extensions", False),
        ("allow_community_extensions", False),
        ("python_enable_replacements", False),
    ]
    for name, value in settings:
        con.execute(f"SET {name} = ?", [value])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")  # last: every SET after this one fails


def checked_query(con: duckdb.DuckDBPyConnection, query: str, *, scoped: bool = False) -> str:
    """Return the statement to run for ``query`` if it is a plain read, else raise.

    Raises :class:`QueryRefusedError` naming what is refused (a statement type, a
    second statement, a table function) and :class:`QueryError` for SQL DuckDB
    cannot parse. ``scoped``: the query may read only the (scoped) view by its plain
    name: no qualified table (``live.audit_trails`` is the unscoped store) and no
    file-reading table function (the archives are unscoped).
    """
    statements = _parse(con, query)
    if len(statements) != 1:
        raise QueryRefusedError(
            f"analytics runs exactly one statement per query, got {len(statements)}")
    statement = statements[0]
    if statement.type == duckdb.StatementType.SELECT:
        _check_tree(con, query, scoped)
        return query
    if statement.type == duckdb.StatementType.EXPLAIN:
        match = _EXPLAIN.match(query)
        inner = query[match.end():] if match else ""
        try:
            inner_statements = _parse(con, inner) if inner.strip() else []
        except QueryError:  # e.g. EXPLAIN (FORMAT json) ...: options are not read here
            inner_statements = []
        if (len(inner_statements) != 1
                or inner_statements[0].type != duckdb.StatementType.SELECT):
            raise QueryRefusedError(
                "the audit trail is read-only: EXPLAIN [ANALYZE] is allowed only of a "
                "single SELECT (no EXPLAIN options)")
        _check_tree(con, inner, scoped)
        analyze = "ANALYZE " if match and match.group(1) else ""
        return f"EXPLAIN {analyze}{inner}"
    raise QueryRefusedError(
        f"the audit trail is read-only: {statement.type.name} statements are not allowed "
        "(only SELECT, and EXPLAIN [ANALYZE] of a SELECT)")


def _parse(con: duckdb.DuckDBPyConnection, query: str) -> list[Any]:
    try:
        return list(con.extract_statements(query))
    except duckdb.PermissionException as exc:  # IMPORT DATABASE reads files to parse
        raise QueryRefusedError(f"analytics reads no file to parse a query: {exc}") from exc
    except duckdb.Error as exc:
        raise QueryError(f"invalid SQL: {exc}") from exc


def _check_tree(con: duckdb.DuckDBPyConnection, select: str, scoped: bool = False) -> None:
    """Refuse ``select`` if its syntax tree calls a table function off the allow-list."""
    row = con.execute("SELECT json_serialize_sql(?)", [select]).fetchone()
    tree: dict[str, Any] = json.loads(row[0]) if row else {"error": True}
    statements = tree.get("statements")
    if tree.get("error") or not isinstance(statements, list) or len(statements) != 1:
        message = tree.get("error_message") or "it is not exactly one SELECT"
        raise QueryRefusedError(f"the query cannot be checked as a plain read: {message}")
    allowed = READABLE_TABLE_FUNCTIONS - (FILE_TABLE_FUNCTIONS if scoped else frozenset())
    if scoped:
        outside = sorted(set(_off_scope_tables(tree)))
        if outside:
            raise QueryRefusedError(
                "a scoped analytics reads only the view audit_trails (and CTEs) by a plain "
                f"name, not {outside[0]}")
    refused = sorted({name for name in _table_functions(tree) if name not in allowed})
    if refused:
        which = (f"table function {refused[0]} is" if len(refused) == 1
                 else f"table functions {', '.join(refused)} are")
        raise QueryRefusedError(
            f"{which} not allowed in analytics: only the trail, its Parquet archives and "
            "DuckDB's generators and metadata functions can be read")


def _off_scope_tables(node: Any) -> Iterator[str]:
    """Every table reference a scoped query may not make: qualified by a catalog or schema
    (the attached store is ``live``) or not a plain identifier (``FROM 'x.parquet'`` is
    DuckDB's replacement scan of a file). A plain name resolves to a CTE or to the
    in-memory database, which holds only the scoped views."""
    if isinstance(node, dict):
        if node.get("type") == "BASE_TABLE":
            parts = (node.get("catalog_name"), node.get("schema_name"), node.get("table_name"))
            name = node.get("table_name")
            if (parts[0] or parts[1] or not isinstance(name, str)
                    or not _PLAIN_NAME.fullmatch(name)):
                yield ".".join(str(p) for p in parts if p) or "<unnamed>"
        for value in node.values():
            yield from _off_scope_tables(value)
    elif isinstance(node, list):
        for value in node:
            yield from _off_scope_tables(value)


def _table_functions(node: Any) -> Iterator[str]:
    """Every table function named anywhere in a serialised syntax tree."""
    if isinstance(node, dict):
        if node.get("type") == "TABLE_FUNCTION":
            function = node.get("function")
            name = function.get("function_name") if isinstance(function, dict) else None
            # a table function the tree does not name plainly is refused, never skipped
            yield str(name).lower() if isinstance(name, str) else "<unnamed>"
        for value in node.values():
            yield from _table_functions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _table_functions(value)
