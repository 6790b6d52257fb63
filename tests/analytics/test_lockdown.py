"""Analytics is read-only and touches no file: every attack of the issue, on both stores.

After each refused attack the store is unchanged (the SQLite file's bytes, the
PostgreSQL table's rows), no file appeared or changed anywhere under the test's
directory, and the analytics connection still answers.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from otel_audit import AuditTrail
from otel_audit.analytics import AuditAnalytics
from otel_audit.errors import QueryError, QueryRefusedError
from otel_audit.store.writer import create_store_engine

SECRET = "top-secret-line"

# {store}: the SQLite store file (on PostgreSQL, a file standing in for it); {out}: a new
# file; {secret}: a local CSV file; {outside}: a Parquet file outside the archive.
ATTACKS = [
    # the three
    "EXPLAIN ANALYZE COPY (SELECT 'x') TO '{store}'",
    "SELECT * FROM read_text('/etc/passwd')",
    "EXPLAIN ANALYZE CALL postgres_execute('live', 'COMMIT; DELETE FROM audit_trails')",
    # writing files
    "COPY (SELECT 'x') TO '{out}'",
    "COPY audit_trails TO '{out}' (FORMAT csv)",
    "COPY (SELECT 'x') TO '{store}' (FORMAT csv)",
    "EXPORT DATABASE '{outdir}'",
    "IMPORT DATABASE '{outdir}'",
    "EXPLAIN COPY (SELECT 'x') TO '{out}'",
    "/* a comment */ EXPLAIN ANALYZE COPY (SELECT 'x') TO '{out}'",
    "/* nested /* comment */ */ EXPLAIN -- and\n ANALYZE COPY (SELECT 'x') TO '{out}'",
    "EXPLAIN ANALYZE" + " " * 5000 + "COPY (SELECT 'x') TO '{out}'",
    "EXPLAIN ANALYZE CALL checkpoint()",
    # other databases, extensions, configuration
    "ATTACH '{out}' AS other",
    "DETACH live",
    "USE live",
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD '{out}'",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET enable_external_access",
    "SET VARIABLE x = 1",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "CHECKPOINT",
    "VACUUM",
    "PREPARE p AS SELECT 1",
    # local files
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_blob('{secret}')",
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_csv_auto('{secret}')",
    "SELECT * FROM read_json('{secret}')",
    "SELECT * FROM '{secret}'",
    "SELECT * FROM glob('{dir}/*')",
    "SELECT * FROM read_parquet('{outside}')",
    "SELECT * FROM sqlite_scan('{store}', 'audit_trails')",
    "SELECT * FROM sqlite_query('{store}', 'SELECT 1')",
    "SELECT * FROM sqlite_attach('{store}')",
    # creating objects (a macro first, then using it, is two statements: refused too)
    "CREATE MACRO m() AS TABLE SELECT * FROM read_text('{secret}')",
    "CREATE TEMP TABLE scratch AS SELECT 1",
    "CREATE TABLE live.audit_trails_copy AS SELECT 1",
    "CREATE OR REPLACE TEMP VIEW audit_trails AS SELECT 1",
    "DELETE FROM live.audit_trails",
    "UPDATE live.audit_trails SET user_id = 'x'",
    "INSERT INTO live.audit_trails (id) VALUES ('x')",
    # several statements in one string
    "SELECT 1; COPY (SELECT 'x') TO '{out}'",
    "SELECT 1; DELETE FROM live.audit_trails",
    "CREATE MACRO m() AS TABLE SELECT 1; SELECT * FROM m()",
    # the scanners' own SQL, however it is wrapped
    "SELECT * FROM postgres_query('live', 'DELETE FROM audit_trails RETURNING 1')",
    "WITH x AS (SELECT * FROM postgres_execute('live', 'COMMIT; DELETE FROM audit_trails')) "
    "SELECT * FROM x",
    "SELECT * FROM postgres_execute('live', 'COMMIT; DELETE FROM audit_trails')",
    "WITH x AS (SELECT * FROM postgres_query('live', 'COMMIT; DELETE FROM audit_trails; "
    "SELECT 1')) SELECT * FROM x",
    "SELECT (SELECT count(*) FROM postgres_query('live', 'SELECT 1')) AS n",
    "SELECT * FROM audit_trails WHERE id IN (SELECT * FROM postgres_query('live', "
    "'DELETE FROM audit_trails RETURNING id'))",
    "SELECT * FROM audit_trails, LATERAL (SELECT * FROM postgres_execute('live', "
    "'COMMIT; DELETE FROM audit_trails'))",
    "EXPLAIN ANALYZE SELECT * FROM postgres_query('live', 'DELETE FROM audit_trails "
    "RETURNING 1')",
    "SELECT * FROM postgres_scan('postgresql://localhost/postgres', 'public', 'x')",
    "SELECT * FROM postgres_attach('postgresql://localhost/postgres')",
    "SELECT * FROM query('SELECT * FROM read_text(''{secret}'')')",
    "SELECT * FROM query_table('audit_trails')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
    "SELECT * FROM enable_logging(storage = 'file', storage_path = '{outdir}')",
    "SELECT * FROM main.read_text('{secret}')",
    "SELECT * FROM system.main.read_text('{secret}')",
]


@dataclass
class Target:
    """One store with the fixture rows, its analytics, and the files the attacks aim at."""

    url: str
    analytics: AuditAnalytics
    root: Path
    names: dict[str, str]

    def state(self) -> tuple[Any, dict[str, str]]:
        """The store's content and every file under the test directory, with digests."""
        files = {str(p.relative_to(self.root)): _digest(p)
                 for p in sorted(self.root.rglob("*")) if p.is_file()}
        return _store_content(self.url), files


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store_content(url: str) -> Any:
    if url.startswith("sqlite"):
        return _digest(Path(make_url(url).database or ""))
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT id, action, user_id, resource_id FROM "
                                     "audit_trails ORDER BY id")).fetchall()
    finally:
        engine.dispose()


@pytest.fixture
def target(make_trail: Callable[..., AuditTrail], store_url: str,
           tmp_path: Path) -> Iterator[Target]:
    """Three records in the store (the trail shut down), analytics open over it."""
    trail = make_trail()
    for i in range(3):
        trail.record("READ", user_id="alice", resource_type="doc", resource_id=f"d-{i}")
    trail.shutdown()
    secret = tmp_path / "secret.csv"
    secret.write_text(f"line\n{SECRET}\n")
    outside = tmp_path / "outside.parquet"
    duckdb.sql(f"SELECT '{SECRET}' AS line").write_parquet(str(outside))
    store = (make_url(store_url).database if store_url.startswith("sqlite")
             else str(tmp_path / "store.db"))
    if not store_url.startswith("sqlite"):
        Path(store).write_bytes(b"stands in for the store file")
    names = {"store": str(store), "out": str(tmp_path / "out.csv"),
             "outdir": str(tmp_path / "exported"), "secret": str(secret),
             "outside": str(outside), "dir": str(tmp_path)}
    with AuditAnalytics(store_url) as analytics:
        analytics.sql("SELECT count(*) FROM audit_trails").fetchall()  # warm up first
        yield Target(store_url, analytics, tmp_path, names)


def test_every_attack_is_refused_and_changes_nothing(target: Target) -> None:
    # one store and one analytics connection for all attacks (setting each up is most of
    # the cost); the state is compared around every single attack, and every failure is
    # listed, not only the first
    failures: list[str] = []
    for attack in ATTACKS:
        before = target.state()
        try:
            target.analytics.sql(attack.format(**target.names)).fetchall()
            failures.append(f"{attack!r} ran")
        except QueryRefusedError as refused:
            if SECRET in str(refused):
                failures.append(f"{attack!r} leaked the secret in its error: {refused}")
        except Exception as other:  # refused, but not as a refusal
            failures.append(f"{attack!r} raised {type(other).__name__}: {other}")
        if target.state() != before:
            failures.append(f"{attack!r} changed the store or a file")
        try:
            count = target.analytics.sql("SELECT count(*) FROM audit_trails").fetchone()
        except QueryError as broken:
            count = (str(broken),)
        if count != (3,):
            failures.append(f"{attack!r} broke the view: {count}")
    assert failures == []


def test_the_connection_is_locked_by_duckdb_itself(target: Target) -> None:
    settings = dict(target.analytics.sql(
        "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
        "'lock_configuration', 'python_enable_replacements', 'autoload_known_extensions', "
        "'autoinstall_known_extensions')").fetchall())
    assert settings == {"enable_external_access": "false", "lock_configuration": "true",
                        "python_enable_replacements": "false",
                        "autoload_known_extensions": "false",
                        "autoinstall_known_extensions": "false"}
    # the raw connection (public, used by the CLI's progress display) is locked too
    before = target.state()
    with pytest.raises(duckdb.Error, match="locked"):
        target.analytics.con.execute("SET enable_external_access = true")
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        target.analytics.con.execute(f"COPY (SELECT 1) TO '{target.names['out']}'")
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        target.analytics.con.execute(f"SELECT * FROM read_text('{target.names['secret']}')")
    assert target.state() == before


def test_python_variables_are_never_scanned(target: Target) -> None:
    hidden = duckdb.sql(f"SELECT '{SECRET}' AS line")  # a caller's local relation
    frame = [SECRET]
    assert hidden is not None and frame
    for name in ("hidden", "frame"):
        with pytest.raises(QueryError, match="does not exist") as missing:
            target.analytics.sql(f"SELECT * FROM {name}")
        assert "Python" not in str(missing.value)


@pytest.mark.parametrize("query", [
    "SELECT count(*) FROM audit_trails",
    "WITH r AS (SELECT * FROM audit_trails) SELECT count(*) FROM r",
    "SELECT count(*) FROM (DESCRIBE audit_trails) WHERE column_name IN ('id', 'seq', 'action')",
    "SELECT count(*) FROM generate_series(1, 3)",
    "SELECT count(*) FROM audit_trails, LATERAL (SELECT * FROM json_each('[1]'))",
    "SELECT count(*) FROM (SUMMARIZE SELECT id, action, user_id FROM audit_trails)",
    "FROM audit_trails SELECT count(DISTINCT resource_id)",
])
def test_plain_reads_still_run(target: Target, query: str) -> None:
    assert target.analytics.sql(query).fetchall() == [(3,)]


@pytest.mark.parametrize(("query", "kind"), [
    ("EXPLAIN SELECT count(*) FROM audit_trails", "physical_plan"),
    ("explain analyse SELECT count(*) FROM audit_trails", "analyzed_plan"),
    ("-- why\n/* and how */ EXPLAIN ANALYZE SELECT count(*) FROM audit_trails",
     "analyzed_plan"),
])
def test_explain_of_a_select_runs(target: Target, query: str, kind: str) -> None:
    plans = dict(target.analytics.sql(query).fetchall())
    assert list(plans) == [kind]
    assert "SCAN" in plans[kind].upper()


def test_refusals_name_what_is_refused(target: Target) -> None:
    with pytest.raises(QueryRefusedError, match=r"^table function postgres_query is not"):
        target.analytics.sql("SELECT * FROM postgres_query('live', 'SELECT 1')")
    with pytest.raises(QueryRefusedError, match=r"^table functions query, read_text are not"):
        target.analytics.sql("SELECT * FROM query('SELECT 1'), read_text('x')")
    with pytest.raises(QueryRefusedError, match="COPY statements are not allowed"):
        target.analytics.sql("COPY audit_trails TO 'x.csv'")
    with pytest.raises(QueryRefusedError, match="exactly one statement per query, got 2"):
        target.analytics.sql("SELECT 1; SELECT 2")


def test_explain_options_are_refused_not_guessed(target: Target) -> None:
    with pytest.raises(QueryRefusedError, match=r"EXPLAIN \[ANALYZE\] is allowed only of"):
        target.analytics.sql("EXPLAIN (FORMAT json) SELECT 1")


def test_archives_stay_readable_but_nothing_else(target: Target, tmp_path: Path) -> None:
    archive = tmp_path / "archive" / "day=2026-05-04"
    archive.mkdir(parents=True)
    target.analytics.copy_to("SELECT * FROM audit_trails", None, archive / "part-0.parquet",
                             "parquet")
    with AuditAnalytics(target.url, archive_dir=tmp_path / "archive") as analytics:
        assert analytics.sql("SELECT count(*) FROM audit_trails").fetchone() == (6,)
        pattern = f"{tmp_path / 'archive'}/**/*.parquet"
        assert analytics.sql(f"SELECT count(*) FROM read_parquet('{pattern}')").fetchone() \
            == (3,)
        for escape in (f"{tmp_path}/outside.parquet",
                       f"{tmp_path / 'archive'}/../outside.parquet",
                       f"{tmp_path / 'archive'}-evil/x.parquet"):
            with pytest.raises(QueryRefusedError, match="archive directory"):
                analytics.sql(f"SELECT * FROM read_parquet('{escape}')")


def test_exports_write_only_their_target(target: Target, tmp_path: Path) -> None:
    before = target.state()[1]
    out = tmp_path / "export.jsonl"
    target.analytics.copy_to("SELECT resource_id, context, timestamp FROM audit_trails "
                             "WHERE resource_id = $r", {"r": "d-1"}, out, "jsonl")
    line = out.read_text().strip()
    assert line.startswith('{"resource_id":"d-1","context":')
    assert '"context":"' not in line  # JSON stays nested, not a quoted string
    assert "+00" in line  # timestamps in UTC
    after = target.state()[1]
    assert set(after) - set(before) == {"export.jsonl"}
    twice = tmp_path / "twice.csv"  # duplicate names keep their own values
    target.analytics.copy_to("SELECT 1 AS a, 2 AS a", None, twice, "csv")
    assert twice.read_text().splitlines()[1] == "1,2"
    typed = tmp_path / "typed.parquet"  # the view's types survive the hop between connections
    target.analytics.copy_to("SELECT context, timestamp, success FROM audit_trails", None,
                             typed, "parquet")
    described = duckdb.sql(f"DESCRIBE SELECT * FROM '{typed}'").fetchall()
    assert [(name, kind) for name, kind, *_ in described] == [
        ("context", "JSON"), ("timestamp", "TIMESTAMP WITH TIME ZONE"), ("success", "BOOLEAN")]
    with pytest.raises(QueryRefusedError):
        target.analytics.copy_to(f"SELECT * FROM read_text('{target.names['secret']}')",
                                 None, tmp_path / "leak.csv", "csv")
    assert not (tmp_path / "leak.csv").exists()


def test_spilled_pages_go_to_a_private_directory_removed_on_close(sqlite_url: str) -> None:
    trail = AuditTrail(sqlite_url, auto_migrate=True)
    trail.record("READ", user_id="alice", resource_type="doc", resource_id="d")
    trail.shutdown()
    analytics = AuditAnalytics(sqlite_url)
    spill = Path(analytics.sql("SELECT current_setting('temp_directory')").fetchone()[0])
    assert spill.is_dir() and spill.stat().st_mode & 0o077 == 0
    analytics.close()
    assert not spill.exists()


# ------------------------------------------------------- a store without the table


def test_store_without_the_table_is_a_clear_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.close()
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(QueryError) as missing:
        AuditAnalytics(f"sqlite:///{path}")
    message = str(missing.value)
    assert message == f"no audit_trails table in sqlite:///{path}: run otel-audit migrate"
    assert "Python" not in message and "Did you mean" not in message
    assert list(temp.iterdir()) == []  # the failed construction left no spill directory


@pytest.fixture
def pg_admin_url() -> str:
    """The PostgreSQL server of the test suite (admin rights), or a skip."""
    url = os.environ.get("OTEL_AUDIT_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("needs OTEL_AUDIT_TEST_POSTGRES_URL")
    return str(make_url(url).set(drivername="postgresql+psycopg").render_as_string(
        hide_password=False))


@pytest.mark.postgres
def test_postgres_without_the_table_is_a_clear_error(pg_admin_url: str) -> None:
    name = f"otel_audit_empty_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(pg_admin_url).set(database=name, password="s3cret-pw")
        with pytest.raises(QueryError) as missing:
            AuditAnalytics(url.render_as_string(hide_password=False))
        message = str(missing.value)
        assert message.startswith("no audit_trails table in postgresql")
        assert message.endswith(f"/{name}: run otel-audit migrate")
        assert "s3cret-pw" not in message and "Did you mean" not in message
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ------------------------------------------------------------ a read-only role


@pytest.mark.postgres
def test_analytics_works_with_a_select_only_role(pg_url: str) -> None:
    trail = AuditTrail(pg_url, auto_migrate=True)
    for i in range(4):
        trail.record("DELETE", user_id="bob", resource_type="doc", resource_id=f"d-{i}")
    trail.shutdown()
    role = f"audit_reader_{uuid.uuid4().hex[:10]}"
    owner = create_store_engine(pg_url)
    database = make_url(pg_url).database
    statements = [  # as in the README's "Analysis with DuckDB"
        f"CREATE ROLE {role} LOGIN",
        f'GRANT CONNECT ON DATABASE "{database}" TO {role}',
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT ON audit_trails, audit_checkpoints TO {role}",
    ]
    with owner.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    try:
        reader_url = make_url(pg_url).set(username=role, password=None)
        url = reader_url.render_as_string(hide_password=False)
        with AuditAnalytics(url) as analytics:
            assert analytics.sql("SELECT count(*) FROM audit_trails").fetchone() == (4,)
            deletions = analytics.report("deletions_by_actor").fetchall()
            assert deletions and deletions[0][0] == "bob"
            snapshot = AuditAnalytics(url, snapshot=True)
            assert snapshot.sql("SELECT count(*) FROM audit_trails").fetchone() == (4,)
            snapshot.close()
        # the last lock: the role itself cannot write, whatever reaches the server
        reader = create_engine(reader_url)
        with reader.connect() as conn, pytest.raises(Exception, match="permission denied"):
            conn.execute(text("DELETE FROM audit_trails"))
        reader.dispose()
        assert _store_content(pg_url) and len(_store_content(pg_url)) == 4
    finally:
        with owner.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        owner.dispose()


def test_threads_share_one_analytics_safely(target: Target) -> None:
    # one DuckDB connection used from several threads at once loses results ("closed
    # pending query"); each thread queries through its own cursor of the locked database
    problems: list[str] = []
    start = threading.Barrier(6)

    def work(k: int) -> None:
        start.wait()
        for i in range(40):
            try:
                if i % 3 == 0:
                    with pytest.raises(QueryRefusedError):
                        target.analytics.sql(f"SELECT * FROM read_text('{target.names['secret']}')")
                    continue
                got = target.analytics.sql(f"SELECT count(*) + {k} FROM audit_trails").fetchall()
                if got != [(3 + k,)]:
                    problems.append(f"thread {k}: {got}")
            except BaseException as exc:  # reported on the main thread
                problems.append(f"thread {k}: {exc!r}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
