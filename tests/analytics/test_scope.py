"""A scoped AuditAnalytics: only some teams, never restricted, and no way around the view."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from otel_audit import AuditTrail
from otel_audit.analytics import AnalyticsScope, AuditAnalytics, list_reports
from otel_audit.errors import QueryRefusedError

WHEN = dt.datetime(2026, 5, 4, 22, 30, tzinfo=dt.UTC)
TEAM_A = AnalyticsScope(teams=("team-a",))


def _write(trail: AuditTrail, user: str, day: int = 0) -> None:
    for team, classification in [("team-a", "internal"), ("team-a", "restricted"),
                                 ("team-b", "internal"), (None, None)]:
        trail.record("READ", user_id=user, resource_type="doc", resource_id=f"{team}",
                     team_id=team, data_classification=classification,
                     timestamp=WHEN + dt.timedelta(days=day))
    trail.flush()


def _archive(tmp_path: Path) -> Path:
    """A Parquet archive holding every team's (and restricted) records."""
    old = AuditTrail(f"sqlite:///{tmp_path}/old.db", auto_migrate=True)
    _write(old, "carol", day=-30)
    old.shutdown()
    archive = tmp_path / "archive" / "day=2026-04-04"
    archive.mkdir(parents=True)
    with AuditAnalytics(f"sqlite:///{tmp_path}/old.db") as source:
        source.copy_to("SELECT * FROM audit_trails", None, archive / "part-0.parquet",
                       "parquet")
    return tmp_path / "archive"


def test_the_view_holds_only_the_scope(tmp_path: Path, make_trail: Callable[..., AuditTrail],
                                       store_url: str) -> None:
    _write(make_trail(), "dave")
    archive = _archive(tmp_path)
    with AuditAnalytics(store_url, archive_dir=archive, scope=TEAM_A) as scoped:
        rows = scoped.sql("SELECT user_id, team_id, data_classification FROM audit_trails "
                          "ORDER BY user_id").fetchall()
    assert rows == [("carol", "team-a", "internal"), ("dave", "team-a", "internal")]
    every_team = AnalyticsScope(teams=("*",), restricted=True)
    with AuditAnalytics(store_url, archive_dir=archive, scope=every_team) as everything:
        assert everything.sql("SELECT count(*) FROM audit_trails").fetchone() == (8,)
    with AuditAnalytics(store_url, scope=AnalyticsScope(teams=())) as nothing:
        assert nothing.sql("SELECT count(*) FROM audit_trails").fetchone() == (0,)


def test_a_team_name_is_a_literal_not_sql(make_trail: Callable[..., AuditTrail],
                                          store_url: str) -> None:
    _write(make_trail(), "dave")
    sneaky = AnalyticsScope(teams=("x') OR true OR ('",))
    with AuditAnalytics(store_url, scope=sneaky) as scoped:
        assert scoped.sql("SELECT count(*) FROM audit_trails").fetchone() == (0,)


@pytest.mark.parametrize("query", [
    "SELECT * FROM live.audit_trails",
    "SELECT * FROM live.main.audit_trails",
    "SELECT * FROM memory.main.audit_trails",
    "SELECT * FROM read_parquet('{archive}/**/*.parquet')",
    "SELECT * FROM parquet_scan('{archive}/day=2026-04-04/part-0.parquet')",
    "SELECT * FROM '{archive}/day=2026-04-04/part-0.parquet'",
    'SELECT * FROM "{archive}/day=2026-04-04/part-0.parquet"',
    "WITH x AS (SELECT * FROM live.audit_trails) SELECT * FROM x",
    "SELECT (SELECT count(*) FROM live.audit_trails)",
    "EXPLAIN SELECT * FROM live.audit_trails",
])
def test_no_query_reaches_unscoped_rows(tmp_path: Path, make_trail: Callable[..., AuditTrail],
                                        store_url: str, query: str) -> None:
    _write(make_trail(), "dave")
    archive = _archive(tmp_path)
    with AuditAnalytics(store_url, archive_dir=archive, scope=TEAM_A) as scoped:
        with pytest.raises(QueryRefusedError):
            scoped.sql(query.format(archive=archive))
        # the same query runs unscoped (it is the scope that refuses it)
        assert scoped.sql("WITH x AS (SELECT * FROM audit_trails) SELECT count(*) FROM x"
                          ).fetchone() == (2,)


def test_every_report_runs_over_the_scope(tmp_path: Path,
                                          make_trail: Callable[..., AuditTrail],
                                          store_url: str) -> None:
    _write(make_trail(), "dave")
    with AuditAnalytics(store_url, scope=TEAM_A) as scoped:
        for report in list_reports():
            required = {p.name: _value(p.type) for p in report.params if p.required}
            relation = scoped.report(report.name, **required)
            columns = list(relation.columns)
            for row in relation.fetchall():
                values = dict(zip(columns, row, strict=True))
                assert values.get("team_id", "team-a") == "team-a", report.name
                assert values.get("data_classification", "internal") != "restricted"


def _value(kind: str) -> object:
    return {"VARCHAR": "team-b", "INTEGER": 1, "DOUBLE": 1.0, "BOOLEAN": True,
            "TIMESTAMPTZ": WHEN}[kind]
