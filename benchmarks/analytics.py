"""Report latency through ``AuditAnalytics`` (DuckDB over SQLite) vs SQLite answering itself.

Builds SQLite trails of 1M and 10M records (``--quick``: 20k and 100k) with the real
schema and indexes: DuckDB generates the rows and writes them through its sqlite
scanner, in the exact layout the trail's writer uses (UTC text timestamps, 0/1
booleans, JSON text). Then, for every report, prints the median time through
``AuditAnalytics(snapshot=True)`` (loaded once into DuckDB's columnar memory; the load
time is printed), one live run through ``AuditAnalytics()`` (every query scans the
SQLite table through the scanner), and, in the same run, the same question answered by
SQLite's own SQL where SQLite can express it, with the ratio. Peak memory (max RSS) and
the cost of the read-only check that precedes every query are printed.

    python benchmarks/analytics.py [--quick] [--sizes 1000000 ...] [--repeat 3]

Latest figures and what they mean: docs/performance.md.
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy.engine import make_url

from otel_audit.analytics import AuditAnalytics, list_reports
from otel_audit.analytics._guard import checked_query, lock_down
from otel_audit.analytics.duck import attach_store, create_view, load_extension
from otel_audit.store.migrate import upgrade
from otel_audit.store.schema import RECORD_COLUMNS
from otel_audit.store.writer import create_store_engine

USERS = 500
_CHAIN = ("stream", "seq", "prev_hash", "hash")  # left NULL: generated rows are not chained
START = "2026-01-01 00:00:00"

_GENERATE = f"""
INSERT INTO s.audit_trails ({", ".join(f'"{c}"' for c in RECORD_COLUMNS + _CHAIN)})
SELECT
    md5(CAST(i AS VARCHAR)) AS id,
    strftime(TIMESTAMP '{START}' + to_microseconds(CAST(i * ($span / $n) AS BIGINT)
             + CAST(hash(i) % 3600000000 AS BIGINT)), '%Y-%m-%d %H:%M:%S.%f') AS "timestamp",
    md5('t' || (i // 3)) AS correlation_id, NULL AS request_id,
    md5('t' || (i // 3)) AS trace_id, substr(md5('s' || i), 1, 16) AS span_id,
    CASE WHEN i % 97 < 2 THEN 'LOGIN' WHEN i % 101 = 0 THEN 'EXPORT'
         WHEN i % 10 < 5 THEN 'READ' WHEN i % 10 < 7 THEN 'UPDATE'
         WHEN i % 10 < 8 THEN 'CREATE' WHEN i % 10 < 9 THEN 'EXECUTE' ELSE 'DELETE' END,
    CASE WHEN i % 7 = 0 THEN 'credential' WHEN i % 5 = 0 THEN 'user'
         ELSE ['tool', 'server', 'prompt', 'gateway'][1 + i % 4] END AS resource_type,
    'r-' || (hash(i * 31) % 20000) AS resource_id, NULL AS resource_name,
    CASE WHEN i % 9 = 0 THEN 'svc-automation' ELSE 'user' || (hash(i) % {USERS}) END,
    NULL AS user_email, 'team' || (hash(i) % {USERS} % 8) AS team_id,
    '10.0.' || (hash(i) % {USERS} % 250) || '.' || (hash(i // 1000) % 4) AS client_ip,
    'agent/' || (hash(i) % 3) AS user_agent, NULL AS request_path, NULL AS request_method,
    CASE WHEN i % 10 IN (5, 6, 9) THEN '{{"v":' || (i % 13) || '}}' END AS old_values,
    CASE WHEN i % 10 IN (5, 6, 7) THEN '{{"v":' || (i % 13 + 1) || '}}' END AS new_values,
    NULL AS changes,
    CASE WHEN i % 7 = 0 THEN 'restricted' WHEN i % 5 = 0 THEN 'confidential' END,
    CASE WHEN i % 7 = 0 OR i % 10 = 9 THEN 1 ELSE 0 END AS requires_review,
    CASE WHEN hash(i * 7) % 100 < 3 THEN 0 ELSE 1 END AS success, NULL AS error_message,
    CASE WHEN i % 101 = 0 THEN '{{"rows":' || (hash(i) % 5000 + 1) || '}}' END AS context,
    'bench' AS service_name,
    CASE WHEN i % 9 = 0 THEN 'user' || (hash(i * 3) % {USERS}) END AS acting_as,
    1 AS schema_version, NULL AS stream, NULL AS seq, NULL AS prev_hash, NULL AS hash
FROM range($n) r(i)
"""

#: The same questions in SQLite's own SQL (where it can express them).
SQLITE_EQUIVALENTS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "activity_by_team": (
        "SELECT coalesce(team_id, '(none)') AS team, count(*), count(DISTINCT user_id), "
        "sum(NOT success), sum(data_classification IN ('confidential','restricted')), "
        "sum(upper(action) IN ('CREATE','UPDATE','DELETE')) FROM audit_trails GROUP BY team",
        ()),
    "confidential_access": (
        "SELECT user_id, team_id, date(timestamp) AS day, count(*), "
        "sum(data_classification = 'restricted'), sum(NOT success) FROM audit_trails "
        "WHERE data_classification IN ('confidential','restricted') "
        "GROUP BY user_id, team_id, day", ()),
    "deletions_by_actor": (
        "SELECT user_id, count(*), sum(NOT success), min(timestamp), max(timestamp) "
        "FROM audit_trails WHERE upper(action) = 'DELETE' GROUP BY user_id", ()),
    "acting_as_usage": (
        "SELECT user_id, acting_as, count(*), sum(NOT success), min(timestamp), "
        "max(timestamp) FROM audit_trails WHERE acting_as IS NOT NULL "
        "GROUP BY user_id, acting_as", ()),
    "failed_logins_by_ip": (
        "SELECT client_ip, count(*), count(DISTINCT user_id) FROM audit_trails "
        "WHERE upper(action) = 'LOGIN' AND NOT success AND client_ip IS NOT NULL "
        "GROUP BY client_ip HAVING count(*) >= 3", ()),
    "failure_spikes": (
        "WITH daily AS (SELECT user_id, date(timestamp) AS day, sum(NOT success) AS f "
        "FROM audit_trails GROUP BY user_id, day), b AS (SELECT user_id, day, f, "
        "coalesce((sum(f) OVER w - f) * 1.0 / nullif(count(*) OVER w - 1, 0), 0) AS base "
        "FROM daily WINDOW w AS (PARTITION BY user_id)) "
        "SELECT * FROM b WHERE f >= 3 AND f > 3.0 * base", ()),
    "privileged_after_hours": (
        "SELECT id FROM audit_trails WHERE (upper(action) IN ('CREATE','UPDATE','DELETE',"
        "'EXPORT','EXECUTE','GRANT','REVOKE') OR data_classification = 'restricted') AND "
        "(CAST(strftime('%H', timestamp) AS INTEGER) < 8 OR "
        "CAST(strftime('%H', timestamp) AS INTEGER) >= 18 OR strftime('%w', timestamp) "
        "IN ('0','6'))", ()),
    "first_time_access": (
        "SELECT user_id, resource_type, min(timestamp) FROM audit_trails "
        "WHERE resource_type IS NOT NULL GROUP BY user_id, resource_type", ()),
    "new_client_for_user": (
        "WITH f AS (SELECT user_id, min(timestamp) AS t0 FROM audit_trails GROUP BY user_id), "
        "c AS (SELECT user_id, client_ip, min(timestamp) AS t FROM audit_trails "
        "GROUP BY user_id, client_ip) SELECT c.* FROM c JOIN f USING (user_id) WHERE c.t > f.t0",
        ()),
    "resource_history": (
        "SELECT * FROM audit_trails WHERE resource_type = ? AND resource_id = ? AND "
        "(old_values IS NOT NULL OR new_values IS NOT NULL OR changes IS NOT NULL OR "
        "upper(action) IN ('CREATE','UPDATE','DELETE')) ORDER BY timestamp, id",
        ("tool", "r-42")),
    "trace_timeline": (
        "SELECT * FROM audit_trails WHERE trace_id = ? ORDER BY timestamp, id",
        ("__TRACE__",)),
    "who_accessed": (
        "SELECT user_id, count(*), min(timestamp), max(timestamp) FROM audit_trails "
        "WHERE resource_id = ? GROUP BY user_id", ("r-42",)),
}

#: Reports that aggregate over the whole trail (the >= 10x target applies to these).
AGGREGATE = {"activity_by_team", "confidential_access", "deletions_by_actor",
             "acting_as_usage", "failed_logins_by_ip", "failure_spikes",
             "first_time_access", "new_client_for_user"}


def build_trail(path: Path, n: int, days: int = 90) -> float:
    """Create a migrated SQLite trail of ``n`` generated records; return seconds taken."""
    started = time.perf_counter()
    engine = create_store_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    lite = sqlite3.connect(path)
    # bulk load without the indexes, then build them once (sorted) instead of row by row
    indexes = [sql for (sql,) in lite.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_trails' "
        "AND sql IS NOT NULL")]
    for (name,) in lite.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                "tbl_name = 'audit_trails' AND sql IS NOT NULL").fetchall():
        lite.execute(f'DROP INDEX "{name}"')
    lite.commit()
    con = duckdb.connect()
    load_extension(con, "sqlite_scanner")
    con.execute(f"ATTACH '{path}' AS s (TYPE sqlite)")
    con.execute(_GENERATE, {"n": n, "span": days * 86_400_000_000})
    con.close()
    for sql in indexes:
        lite.execute(sql)
    lite.execute("ANALYZE")
    lite.commit()
    lite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    lite.close()
    return time.perf_counter() - started


def median_seconds(run: Callable[[], Any], repeat: int) -> float:
    """Median wall time of ``repeat`` runs of ``run``."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _params(name: str, trace_id: str) -> dict[str, Any]:
    return {"resource_history": {"resource_type": "tool", "resource_id": "r-42"},
            "who_accessed": {"resource_id": "r-42"},
            "trace_timeline": {"trace_id": trace_id}}.get(name, {})


def _child_rss(analytics: AuditAnalytics) -> float:
    """Peak RSS (MB) of the analytics' child process (0 if there is none)."""
    pid = analytics._isolated.pid if analytics._isolated is not None else None
    if pid is None:
        return 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _in_process(url: str) -> duckdb.DuckDBPyConnection:
    """The previous path, for comparison: the locked DuckDB attaching the SQLite file in
    this process (safe here only because nothing writes the file while it runs)."""
    con = duckdb.connect(":memory:", config={"python_enable_replacements": False})
    con.execute("SET TimeZone = 'UTC'")
    attach_store(con, make_url(url))
    create_view(con, "live", None)
    lock_down(con, readable=[], spill_dir=Path(tempfile.mkdtemp(prefix="bench-spill-")))
    return con


def bench_isolation(url: str, repeat: int) -> None:
    """What reading SQLite in a child process costs: its start, a round trip, a report
    and a large result, next to the same locked DuckDB in this process."""
    rounds = max(repeat, 3)
    starts = []
    for _ in range(rounds):
        started = time.perf_counter()
        with AuditAnalytics(url) as fresh:
            fresh.sql("SELECT 1").fetchall()
        starts.append(time.perf_counter() - started)
    print(f"child start (AuditAnalytics() + first query + close): median "
          f"{statistics.median(starts) * 1e3:.0f} ms")
    child = AuditAnalytics(url)
    inproc = _in_process(url)
    team = next(r for r in list_reports() if r.name == "activity_by_team")
    cases = [("round trip SELECT 1", "SELECT 1", None, 50),
             ("report activity_by_team (live)", f"SELECT count(*) FROM ({team.sql})",
              team.bind({}), rounds),
             ("100,000 rows x all columns", "SELECT * FROM audit_trails LIMIT 100000", None,
              rounds)]
    print(f"{'isolation cost':<34} {'in-process':>11} {'child':>11} {'child/in':>9}")
    for label, sql, params, times in cases:
        here = median_seconds(lambda q=sql, p=params: inproc.cursor().sql(
            checked_query(inproc, q), params=p).fetchall(), times)
        there = median_seconds(lambda q=sql, p=params: child.sql(q, p).fetchall(), times)
        print(f"{label:<34} {here * 1e3:>9.1f}ms {there * 1e3:>9.1f}ms {there / here:>8.2f}x",
              flush=True)
    child.close()
    inproc.close()


def bench_size(path: Path, n: int, repeat: int, sqlite_repeat: int, live: bool) -> None:
    """Build one trail and print every report's time, with SQLite side by side."""
    if path.exists():
        print(f"\n## {n:,} records (reused {path.name}, {path.stat().st_size / 1e6:.0f} MB)")
    else:
        built = build_trail(path, n)
        print(f"\n## {n:,} records (generated in {built:.1f} s, "
              f"{path.stat().st_size / 1e6:.0f} MB)")
    limit = 1.0 if n <= 1_000_000 else 5.0
    url = f"sqlite:///{path}"
    started = time.perf_counter()
    snap = AuditAnalytics(url, snapshot=True)
    loaded = time.perf_counter() - started
    trace = snap.sql("SELECT trace_id FROM audit_trails LIMIT 1").fetchone()  # loads it
    loaded = time.perf_counter() - started
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"snapshot load (AuditAnalytics(snapshot=True), in its child process): "
          f"{loaded:.1f} s; max RSS after load {rss_after_load:.0f} MB here, "
          f"{_child_rss(snap):.0f} MB in the child")
    direct = AuditAnalytics(url) if live else None
    trace_id = trace[0] if trace else ""
    lite = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    print(f"{'report':<24} {'snapshot':>9} {'live':>9} {'sqlite':>9} {'sqlite/snap':>11}  "
          f"target <= {limit:g}s")
    worst = 0.0
    ratios = []
    for report in list_reports():
        bound = report.bind(_params(report.name, trace_id))
        counted = f"SELECT count(*) FROM ({report.sql})"
        fast = median_seconds(lambda q=counted, b=bound: snap.sql(q, b).fetchall(), repeat)
        worst = max(worst, fast)
        live_s = "-"
        if direct is not None:
            slow = median_seconds(lambda q=counted, b=bound: direct.sql(q, b).fetchall(), 1)
            live_s = f"{slow:.3f}s"
        lite_s = ratio_s = "-"
        if report.name in SQLITE_EQUIVALENTS:
            sql, args = SQLITE_EQUIVALENTS[report.name]
            args = tuple(trace_id if a == "__TRACE__" else a for a in args)
            seconds = median_seconds(
                lambda q=sql, a=args: lite.execute(f"SELECT count(*) FROM ({q})", a).fetchall(),
                sqlite_repeat)
            lite_s = f"{seconds:.3f}s"
            ratio_s = f"{seconds / fast:.1f}x"
            if report.name in AGGREGATE:
                ratios.append(seconds / fast)
        verdict = "ok" if fast <= limit else "OVER"
        print(f"{report.name:<24} {fast:>8.3f}s {live_s:>9} {lite_s:>9} {ratio_s:>11}  {verdict}",
              flush=True)
    # the read-only check (DuckDB's parser, twice, and the allow-list walk) runs before
    # every query: its cost next to the reports' own
    checks = [median_seconds(lambda q=f"SELECT count(*) FROM ({r.sql})": checked_query(
        snap.con, q), repeat) for r in list_reports()]
    print(f"read-only check per query: median {statistics.median(checks) * 1e3:.2f} ms, "
          f"max {max(checks) * 1e3:.2f} ms over the {len(checks)} reports")
    snap.close()
    if direct is not None:
        direct.close()
    lite.close()
    bench_isolation(url, repeat)
    if ratios:
        print(f"slowest report (snapshot) {worst:.3f} s (target <= {limit:g} s); aggregate "
              f"reports {min(ratios):.1f}x-{max(ratios):.1f}x faster than SQLite "
              f"(median {statistics.median(ratios):.1f}x; target >= 10x)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS of this process so far): {peak:.0f} MB")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", help="trail sizes to build")
    parser.add_argument("--repeat", type=int, default=3, help="runs per DuckDB report")
    parser.add_argument("--sqlite-repeat", type=int, default=1,
                        help="runs per SQLite query (slow at 10M)")
    parser.add_argument("--dir", type=Path, help="where to build trails (default: a temp dir)")
    parser.add_argument("--keep", type=Path,
                        help="build the trails in this directory and keep them; reuse them "
                        "when they exist")
    parser.add_argument("--no-live", action="store_true",
                        help="skip the live (no snapshot) timings, slow at 10M")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([20_000, 100_000] if args.quick else [1_000_000, 10_000_000])
    print(f"duckdb {duckdb.__version__}, sqlite {sqlite3.sqlite_version}, python "
          f"{sys.version.split()[0]}; median of {args.repeat} DuckDB runs, "
          f"{args.sqlite_repeat} SQLite run(s), 1 live run; timings are of count(*) over each "
          "report")
    if args.keep is not None:  # build once, reuse on later runs
        args.keep.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            bench_size(args.keep / f"trail_{n}.db", n, args.repeat, args.sqlite_repeat,
                       live=not args.no_live)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in sizes:
            path = Path(tmp) / f"trail_{n}.db"
            bench_size(path, n, args.repeat, args.sqlite_repeat, live=not args.no_live)
            path.unlink()


if __name__ == "__main__":
    main()
