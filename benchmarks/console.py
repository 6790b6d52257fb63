"""Server-side latency of the audit console's pages on a large trail (SQLite, PostgreSQL).

Builds a trail of ``--records`` generated records (default 10 million) in SQLite and,
with ``--pg URL`` or ``OTEL_AUDIT_TEST_POSTGRES_URL``, in a scratch PostgreSQL
database: DuckDB generates the rows and writes them through its sqlite/postgres
scanner in the writer's layout (the indexes are dropped for the load and rebuilt once,
then ANALYZE). Timestamps span 90 days up to now; 2,000 users in 20 teams; 1% of the
records require review, half of those already reviewed.

Then it times each page server-side, in process (Starlette's test client: routing,
sign-in, the query, template rendering and the page's own ``audit.read`` record; no
network): the first page of a search unfiltered, by actor, by resource, by action in
the last 24 hours, as an admin and as an auditor scoped to two teams; the record page;
the review queue; and the JSON API's first page. Each is run ``--repeat`` times after
one warm-up run; the median and the slowest are printed per store, against the targets
(search and queue <= 300 ms, record <= 100 ms).

``--insert-cost`` measures instead what the console's two indexes (migration 0006)
cost the writer: the same generated batches inserted into a store at 0005 and at 0006,
interleaved, per store.

    python benchmarks/console.py [--records N] [--repeat R] [--pg URL] [--keep DIR]
    python benchmarks/console.py --insert-cost [--records N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from otel_audit.analytics.duck import load_extension
from otel_audit.config import normalise_database_url
from otel_audit.store.migrate import upgrade
from otel_audit.store.schema import RECORD_COLUMNS

USERS = 2000
TEAMS = 20
DAYS = 90
_CHAIN = ("stream", "seq", "prev_hash", "hash")

_TARGETS = {"search": 0.300, "queue": 0.300, "record": 0.100, "api": 0.300}


def _generate(ts: str, offset: int = 0) -> str:
    """INSERT ... SELECT of ``$n`` rows; ``ts`` is the timestamp expression of ``t``."""
    return f"""
INSERT INTO s.audit_trails ({", ".join(f'"{c}"' for c in RECORD_COLUMNS + _CHAIN)})
SELECT
    md5(CAST(i AS VARCHAR)) AS id,
    {ts} AS "timestamp",
    md5('t' || (i // 4)) AS correlation_id, NULL AS request_id,
    md5('t' || (i // 4)) AS trace_id, substr(md5('s' || i), 1, 16) AS span_id,
    CASE WHEN i % 97 < 2 THEN 'login' WHEN i % 101 = 0 THEN 'export'
         WHEN i % 10 < 5 THEN 'read' WHEN i % 10 < 7 THEN 'update'
         WHEN i % 10 < 8 THEN 'create' WHEN i % 10 < 9 THEN 'execute'
         WHEN i % 100 = 99 THEN 'delete_resource' ELSE 'delete' END AS action,
    ['tool', 'server', 'prompt', 'gateway', 'invoice', 'user'][1 + i % 6] AS resource_type,
    'r-' || (hash(i * 31) % 100000) AS resource_id,
    'resource ' || (hash(i * 31) % 100000) AS resource_name,
    'user' || (hash(i) % {USERS}) AS user_id,
    'user' || (hash(i) % {USERS}) || '@example.com' AS user_email,
    'team' || (hash(i) % {USERS} % {TEAMS}) AS team_id,
    '10.' || (hash(i) % 250) || '.0.' || (i % 200) AS client_ip,
    'agent/1' AS user_agent, '/api/things' AS request_path, 'POST' AS request_method,
    CASE WHEN i % 10 IN (5, 6) THEN '{{"v":' || (i % 13) || '}}' END AS old_values,
    CASE WHEN i % 10 IN (5, 6, 7) THEN '{{"v":' || (i % 13 + 1) || '}}' END AS new_values,
    NULL AS changes,
    CASE WHEN i % 53 = 0 THEN 'restricted' WHEN i % 5 = 0 THEN 'confidential' END,
    i % 100 = 99 AS requires_review,
    hash(i * 7) % 100 >= 3 AS success,
    CASE WHEN hash(i * 7) % 100 < 3 THEN 'denied for user' || (hash(i) % {USERS}) END,
    NULL AS context, 'bench' AS service_name, NULL AS acting_as, 1 AS schema_version,
    NULL AS stream, NULL AS seq, NULL AS prev_hash, NULL AS hash
FROM range({offset}, {offset} + $n) r(i)
"""


def _reviews(ts: str) -> str:
    """Reviews of half the records that require review (every other one)."""
    return f"""
INSERT INTO s.audit_trails ({", ".join(f'"{c}"' for c in RECORD_COLUMNS + _CHAIN)})
SELECT md5('review' || i), {ts}, NULL, NULL, NULL, NULL, 'audit.review', 'audit_record',
    md5(CAST(i AS VARCHAR)), NULL, 'user' || ((hash(i) + 1) % {USERS}), NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, false, true, NULL, '{{"note":"ok"}}',
    'otel-audit-console', NULL, 1, NULL, NULL, NULL, NULL
FROM range($n) r(i) WHERE i % 200 = 99
"""


def _sqlite_ts(expr: str) -> str:
    return f"strftime({expr}, '%Y-%m-%d %H:%M:%S.%f')"


def _time_expr(n: int) -> str:
    # record i of n: newest just before now, oldest DAYS ago, in id order
    return ("(now()::TIMESTAMP - INTERVAL '1 second' - to_microseconds(CAST(("
            f"{n} - i) * ({DAYS} * 86400000000 / {n}) AS BIGINT)))")


def _indexes(conn: Any, backend: str) -> list[tuple[str, str]]:
    if backend == "sqlite":
        sql = ("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND "
               "tbl_name = 'audit_trails' AND sql IS NOT NULL")
    else:
        sql = ("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_trails' "
               "AND indexname <> 'audit_trails_pkey'")
    return [(r[0], r[1]) for r in conn.execute(text(sql))]


def build(url: str, n: int) -> float:
    """Create and fill the trail at ``url`` with ``n`` records; return seconds taken."""
    started = time.perf_counter()
    engine = create_engine(normalise_database_url(url))
    backend = engine.dialect.name
    upgrade(engine)
    with engine.begin() as conn:
        indexes = _indexes(conn, backend)
        for name, _sql in indexes:
            conn.execute(text(f'DROP INDEX "{name}"'))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if backend == "sqlite":
        load_extension(con, "sqlite_scanner")
        con.execute(f"ATTACH '{make_url(url).database}' AS s (TYPE sqlite)")
        ts = _sqlite_ts(_time_expr(n))
    else:
        load_extension(con, "postgres_scanner")
        u = make_url(url)
        dsn = (f"host={u.host or '127.0.0.1'} port={u.port or 5432} dbname={u.database} "
               f"user={u.username or 'postgres'}" + (f" password={u.password}"
                                                      if u.password else ""))
        con.execute(f"ATTACH '{dsn}' AS s (TYPE postgres)")
        ts = f"CAST({_time_expr(n)} AS TIMESTAMPTZ)"
    chunk = 1_000_000
    for offset in range(0, n, chunk):
        size = min(chunk, n - offset)
        # chunks of a million rows: progress, and bounded memory in the scanner
        con.execute(_generate(ts, offset).replace("$n", str(size)), {})
        print(f"  {backend}: {offset + size:,} rows ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
    con.execute(_reviews(ts).replace("$n", str(n)), {})
    con.close()
    with engine.begin() as conn:
        for name, sql in indexes:
            print(f"  {backend}: index {name}", file=sys.stderr, flush=True)
            conn.execute(text(sql))
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return time.perf_counter() - started


def _time(run: Callable[[], Any], repeat: int) -> tuple[float, float, float]:
    started = time.perf_counter()
    run()  # warm-up: the first run reads pages from disk into the cache
    first = time.perf_counter() - started
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return first, statistics.median(times), max(times)


def measure(url: str, repeat: int) -> list[tuple[str, str, float, float, float]]:
    """Time every page on the trail at ``url``."""
    from starlette.testclient import TestClient

    from otel_audit.console import User, create_app, hash_token

    users = [User("admin", "admin", ("*",), hash_token("admin-token")),
             User("auditor", "auditor", ("team3", "team7"), hash_token("auditor-token"))]
    app = create_app(url, users=users)
    out = []
    with TestClient(app) as client:
        def page(path: str, who: str = "admin") -> Callable[[], Any]:
            def run() -> None:
                response = client.get(path, headers={
                    "Authorization": f"Bearer {who}-token"})
                assert response.status_code == 200, (path, response.text[:300])
            return run

        first = client.get("/api/records?range=all&limit=1",
                           headers={"Authorization": "Bearer admin-token"}).json()
        record_id = first["records"][0]["id"]
        cases = [
            ("search", "unfiltered (24h)", page("/")),
            ("search", "unfiltered (all)", page("/?range=all")),
            ("search", "actor user42 (all)", page("/?range=all&actor=user42")),
            ("search", "resource tool/r-4242 (all)",
             page("/?range=all&resource_type=tool&resource_id=r-4242")),
            ("search", "action delete + 24h", page("/?action=delete")),
            ("search", "auditor, 2 teams, unfiltered (24h)", page("/", "auditor")),
            ("search", "auditor, actor user43 (all)",
             page("/?range=all&actor=user43", "auditor")),
            ("search", "auditor, action login + 24h", page("/?action=login", "auditor")),
            ("record", "record page", page(f"/records/{record_id}")),
            ("queue", "review queue", page("/review")),
            ("queue", "review queue, auditor", page("/review", "auditor")),
            ("api", "GET /api/records?limit=50", page("/api/records?limit=50")),
        ]
        for kind, name, run in cases:
            first_s, median, worst = _time(run, repeat)
            out.append((kind, name, first_s, median, worst))
        client.app.state.console.data.trail.flush()  # type: ignore[attr-defined]
    return out


def insert_cost(url_for: Callable[[str], str], n: int, rounds: int) -> None:
    """Insert ``n`` generated rows at revision 0005 and 0006, interleaved, per store.

    The rows are generated once; each store takes them in batches of 512, one
    transaction each, through the driver (``executemany`` on SQLite, ``COPY`` on
    PostgreSQL): the writer's raw path, where an index's cost is not diluted.
    """
    results: dict[str, list[float]] = {"0005": [], "0006": []}
    columns = ", ".join(f'"{c}"' for c in RECORD_COLUMNS + _CHAIN)
    rows: list[tuple[Any, ...]] | None = None
    for r in range(rounds):
        for revision in ("0005", "0006"):
            url = url_for(f"{revision}_{r}")
            engine = create_engine(normalise_database_url(url))
            upgrade(engine, revision)
            engine.dispose()
            parsed = make_url(url)
            if rows is None:
                con = duckdb.connect()
                con.execute("SET TimeZone = 'UTC'")
                ts = (_sqlite_ts(_time_expr(n)) if parsed.get_backend_name() == "sqlite"
                      else f"CAST({_time_expr(n)} AS TIMESTAMPTZ)")
                select = _generate(ts, 0).split("\n", 2)[2].replace("$n", str(n))
                rows = con.execute(select).fetchall()
                con.close()
            started = time.perf_counter()
            if parsed.get_backend_name() == "sqlite":
                import sqlite3

                lite = sqlite3.connect(str(parsed.database))
                lite.execute("PRAGMA journal_mode = WAL")
                lite.execute("PRAGMA synchronous = NORMAL")
                marks = ", ".join("?" * len(rows[0]))
                for offset in range(0, n, 512):
                    lite.executemany(f"INSERT INTO audit_trails ({columns}) VALUES ({marks})",
                                     rows[offset:offset + 512])
                    lite.commit()
                lite.close()
            else:
                import psycopg

                with psycopg.connect(host=parsed.host, port=parsed.port or 5432,
                                     dbname=parsed.database, user=parsed.username,
                                     password=parsed.password) as pg:
                    for offset in range(0, n, 512):
                        with pg.cursor() as cur, cur.copy(
                                f"COPY audit_trails ({columns}) FROM STDIN") as copy:
                            for row in rows[offset:offset + 512]:
                                copy.write_row(row)
                        pg.commit()
            results[revision].append(n / (time.perf_counter() - started))
        rows = rows if r < rounds - 1 else None
    before, after = statistics.median(results["0005"]), statistics.median(results["0006"])
    print(f"  insert rows/s at 0005 {before:,.0f} | at 0006 {after:,.0f} | "
          f"ratio {after / before:.3f} ({rounds} interleaved rounds of {n:,} rows, "
          "batches of 512)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pg", default=os.environ.get("OTEL_AUDIT_TEST_POSTGRES_URL"))
    parser.add_argument("--keep", help="directory for the SQLite trail (kept and reused)")
    parser.add_argument("--insert-cost", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="otel-audit-console-"))
    tmp.mkdir(parents=True, exist_ok=True)
    stores: list[tuple[str, Callable[[str], str], Callable[[], None]]] = []
    if not args.skip_sqlite:
        stores.append(("sqlite", lambda tag: f"sqlite:///{tmp / f'console_{tag}.db'}",
                       lambda: None))
    admin = None
    if args.pg:
        admin = create_engine(normalise_database_url(args.pg), isolation_level="AUTOCOMMIT")
        created: list[str] = []

        def pg_url(tag: str) -> str:
            name = f"otel_audit_console_bench_{tag}".lower()
            with admin.connect() as conn:  # type: ignore[union-attr]
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            created.append(name)
            return normalise_database_url(args.pg).set(database=name).render_as_string(
                hide_password=False)

        def pg_drop() -> None:
            with admin.connect() as conn:  # type: ignore[union-attr]
                for name in created:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

        stores.append(("postgresql", pg_url, pg_drop))
    try:
        for backend, url_for, _drop in stores:
            if args.insert_cost:
                print(f"{backend}: insert cost of the console's indexes")
                insert_cost(url_for, args.records, args.rounds)
                continue
            url = url_for(f"{args.records}")
            path = tmp / f"console_{args.records}.db"
            if backend == "sqlite" and args.keep and path.exists() and path.stat().st_size:
                print(f"sqlite: reusing {path}", file=sys.stderr)
            else:
                if backend == "sqlite" and path.exists():
                    path.unlink()
                seconds = build(url, args.records)
                print(f"{backend}: built {args.records:,} records in {seconds:.0f} s",
                      flush=True)
            print(f"{backend}: {args.records:,} records, median of {args.repeat} "
                  "(first run in parentheses)")
            for kind, name, first, median, worst in measure(url, args.repeat):
                target = _TARGETS[kind]
                verdict = "OK" if median <= target else "MISS"
                print(f"  {kind:<6} {name:<40} {median * 1000:7.1f} ms  (first "
                      f"{first * 1000:7.1f} ms, worst {worst * 1000:7.1f} ms)  "
                      f"target <= {target * 1000:.0f} ms {verdict}", flush=True)
    finally:
        for _backend, _url_for, drop in stores:
            drop()
        if admin is not None:
            admin.dispose()


if __name__ == "__main__":
    main()
