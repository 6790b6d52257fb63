"""DuckDB plumbing: offline extension loading, read-only attachment, the typed view.

Why DuckDB 1.5.5 with the scanner extensions from PyPI wheels: DuckDB downloads its
``sqlite_scanner``/``postgres_scanner`` extensions from the internet on first use, and
DuckDB 2.0 has no PyPI package carrying them. The wheels
``duckdb-extension-sqlite-scanner`` and ``duckdb-extension-postgres-scanner`` (pinned to
the same version as ``duckdb``) ship the signed extension binaries inside the Python
package, so we ``LOAD`` them by file path: no network, and nothing written to
``~/.duckdb`` (an air-gapped auditor's laptop, a read-only home directory in CI).
"""

from __future__ import annotations

import importlib.resources
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy.engine import URL

from ..errors import ConfigError, QueryError
from ..store.schema import audit_trails

__all__ = ["attach_store", "check_sqlite_store", "create_view", "export_relation",
           "load_extension", "snapshot", "sql_literal", "sqlite_store_path"]

_JSON_TYPES = {"JSON", "JSONB"}


def sql_literal(value: str) -> str:
    """Quote ``value`` as a DuckDB string literal (for statements that take no parameters)."""
    return "'" + value.replace("'", "''") + "'"


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load DuckDB extension ``name`` from its PyPI wheel, falling back to DuckDB's cache."""
    package = f"duckdb_extension_{name}"
    try:
        root = importlib.resources.files(package)
        binary = root / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        path = Path(str(binary))
    except ModuleNotFoundError:
        path = None
    try:
        if path is not None and path.is_file():
            con.execute(f"LOAD {sql_literal(str(path))}")
        else:  # an extension installed by other means (INSTALL while online)
            con.execute(f"LOAD {name}")
    except duckdb.Error as exc:
        pip_name = package.replace("_", "-")
        raise QueryError(
            f"cannot load the DuckDB {name} extension: {exc}; install "
            f"{pip_name}=={duckdb.__version__} (the same version as duckdb)"
        ) from exc


def sqlite_store_path(url: URL) -> Path:
    """The resolved file of a SQLite store URL (a :class:`ConfigError` if there is none)."""
    database = url.database
    if not database or database == ":memory:":
        raise ConfigError("AuditAnalytics needs a SQLite file, not an in-memory database")
    path = Path(database).expanduser()
    if not path.is_file():
        raise ConfigError(f"no SQLite audit trail at {path}")
    return path.resolve()


def check_sqlite_store(url: URL, store: str) -> None:
    """Check, with this process's own ``sqlite3``, that ``url`` is a SQLite file holding
    ``audit_trails`` (DuckDB's bundled SQLite opens it only in a child process)."""
    path = sqlite_store_path(url)
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True)
        try:
            found = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit_trails' "
                                "AND type IN ('table', 'view')").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise QueryError(f"cannot read the audit_trails table in {store}: {exc}") from exc
    if found is None:
        raise QueryError(f"no audit_trails table in {store}: run otel-audit migrate")


def attach_store(con: duckdb.DuckDBPyConnection, url: URL, alias: str = "live") -> str:
    """Attach the store at ``url`` read-only as ``alias``; return the backend name."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = sqlite_store_path(url)
        load_extension(con, "sqlite_scanner")
        target = str(path)
        kind = "sqlite"
    elif backend == "postgresql":
        load_extension(con, "postgres_scanner")
        # libpq accepts a URI; the driver suffix (+psycopg) is SQLAlchemy's, not libpq's
        target = url.set(drivername="postgresql").render_as_string(hide_password=False)
        kind = "postgres"
    else:
        raise ConfigError(f"AuditAnalytics reads SQLite or PostgreSQL stores, not {backend!r}")
    try:
        con.execute(f"ATTACH {sql_literal(target)} AS {alias} (TYPE {kind}, READ_ONLY)")
    except duckdb.Error as exc:
        safe = url.render_as_string(hide_password=True)
        raise QueryError(f"cannot attach the audit trail at {safe}: {exc}") from exc
    return backend


def _duck_type(kind: str) -> str:
    if kind in _JSON_TYPES:
        return "JSON"
    return {"BOOLEAN": "BOOLEAN", "BIGINTEGER": "BIGINT", "INTEGER": "INTEGER",
            "DATETIME": "TIMESTAMPTZ"}.get(kind, "VARCHAR")


def _typed_columns(present: set[str]) -> str:
    """The SELECT list giving every source the same types (TIMESTAMPTZ, JSON, BOOLEAN).

    Columns of the current schema that a source lacks (a store on an older migration,
    an archive written before a column existed) read as typed NULLs.
    """
    out = []
    for column in audit_trails.columns:
        name = f'"{column.name}"'
        # the session time zone is UTC, so SQLite's naive UTC text lands unchanged
        duck_type = _duck_type(type(column.type).__name__.upper())
        source = name if column.name in present else "NULL"
        out.append(f"CAST({source} AS {duck_type}) AS {name}")
    return ", ".join(out)


def _columns_of(con: duckdb.DuckDBPyConnection, relation: str) -> set[str]:
    return {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}


def create_view(con: duckdb.DuckDBPyConnection, live: str, archive_glob: str | None,
                name: str = "audit_trails", *, store: str = "the store",
                where: str | None = None) -> None:
    """Create the view ``name`` over the live store and any Parquet archives.

    The view lives in the in-memory database itself (not a connection's temp schema),
    so every cursor of the connection sees it. ``store`` names the store in errors (a
    URL without its password). ``where`` is a fixed predicate over the view's typed
    columns (a scope, see ``AuditAnalytics(scope=...)``) applied to every source.
    """
    table = f"{live}.audit_trails"
    try:
        present = _columns_of(con, table)
    except duckdb.CatalogException as exc:
        # DuckDB's own text would suggest unrelated tables ("Did you mean pg_class?")
        raise QueryError(f"no audit_trails table in {store}: run otel-audit migrate") from exc
    except duckdb.Error as exc:
        raise QueryError(f"cannot read the audit_trails table in {store}: {exc}") from exc
    select = f"SELECT {_typed_columns(present)} FROM {table}"
    if archive_glob is not None:
        source = (f"read_parquet({sql_literal(archive_glob)}, union_by_name = true, "
                  "hive_partitioning = false)")
        try:
            archived = _columns_of(con, source)
        except duckdb.Error as exc:
            raise QueryError(f"cannot read the Parquet archives: {exc}") from exc
        select += f" UNION ALL BY NAME SELECT {_typed_columns(archived)} FROM {source}"
    if where is not None:
        select = f"SELECT * FROM ({select}) AS scoped WHERE {where}"
    con.execute(f"CREATE OR REPLACE VIEW main.{name} AS {select}")


def snapshot(con: duckdb.DuckDBPyConnection, source: str, name: str = "audit_trails") -> None:
    """(Re)load ``source`` into the in-memory DuckDB table ``name`` (columnar, compressed)."""
    con.execute(f"CREATE OR REPLACE TABLE main.{name} AS SELECT * FROM {source}")


class _ArrowStream:
    """A relation seen only through the Arrow C stream interface.

    DuckDB refuses to scan a relation of another connection directly, but scans any
    object exposing ``__arrow_c_stream__`` (no pyarrow involved), so rows stream from
    the locked connection into the export connection batch by batch.
    """

    def __init__(self, relation: duckdb.DuckDBPyRelation) -> None:
        self._relation = relation

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self._relation.__arrow_c_stream__(requested_schema)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def export_relation(relation: duckdb.DuckDBPyRelation, path: str, options: str) -> None:
    """Write ``relation``'s rows to ``path`` with DuckDB's ``COPY ... (options)``.

    The analytics connection may write no file at all, so the ``COPY`` runs on a fresh
    in-memory connection that has nothing attached and reads nothing but this stream.
    Types the Arrow hop flattens (JSON arrives as VARCHAR) are cast back, so an export
    keeps the view's types (JSON stays nested in JSON Lines, typed in Parquet).
    """
    out = duckdb.connect(":memory:", config={"python_enable_replacements": False})
    try:
        out.execute("SET TimeZone = 'UTC'")
        # columns travel by position (c1, c2, ...): a result may repeat a name
        # (SELECT 1 AS a, 2 AS a), which no Arrow reader resolves
        positions = range(1, len(relation.columns) + 1)
        by_position = relation.project(", ".join(f"#{i} AS c{i}" for i in positions))
        source = out.from_arrow(_ArrowStream(by_position))
        columns = []
        for i, name, wanted, got in zip(positions, relation.columns, relation.types,
                                        source.types, strict=True):
            value = f"c{i}" if str(wanted) == str(got) else f"CAST(c{i} AS {wanted})"
            columns.append(f"{value} AS {_quote(name)}")
        source.create_view("export_source")
        out.execute(f"COPY (SELECT {', '.join(columns)} FROM export_source) "
                    f"TO {sql_literal(path)} ({options})")
    finally:
        out.close()
