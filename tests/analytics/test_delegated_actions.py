"""The identity columns in analytics and the ``delegated_actions`` report, on both stores.

The expected answers are computed in plain Python from the records as stored; live rows,
Parquet archives (retention's prune) and rows written before the columns existed (NULL).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlalchemy import text

from otel_audit import AuditTrail
from otel_audit.analytics import AuditAnalytics, get_report
from otel_audit.record import AuditRecord
from otel_audit.retention import prune
from otel_audit.store.migrate import upgrade
from otel_audit.store.writer import create_store_engine

START = dt.datetime(2026, 4, 6, 9, tzinfo=dt.UTC)
ALICE_VIA_SVC = [{"principal": "alice", "via": "oauth_token_exchange"},
                 {"principal": "svc-reports", "via": "service_account"}]
BOB_VIA_TWO = [{"principal": "bob", "via": "sso"},
               {"principal": "agent-7", "via": "oauth_token_exchange"},
               {"principal": "svc-reports", "via": "service_account"}]
# a bare principal is stored as {"principal": "agent-9", "via": ""} (normalisation)
CHAINS: list[Any] = [ALICE_VIA_SVC, BOB_VIA_TWO, ["agent-9"], [], None]


def write_identities(trail: AuditTrail, n: int = 120, seed: int = 18) -> list[AuditRecord]:
    """``n`` records over ten days: chains, acting_as, both, neither; every record kind
    of outcome and auth method. Returns the records as stored."""
    rng = random.Random(seed)
    for i in range(n):
        chain = rng.choice(CHAINS)
        acting_as = rng.choice([None, None, "carol", "dave"])
        actor = "svc-reports" if chain else rng.choice(["erin", "svc-reports"])
        trail.record(rng.choice(["READ", "UPDATE", "EXPORT"]), user_id=actor,
                     resource_type="report", resource_id=f"r-{i % 7}",
                     success=rng.random() > 0.2, acting_as=acting_as,
                     auth_method=rng.choice([None, "oauth", "mtls", "api_key"]),
                     delegation_chain=chain,
                     timestamp=START + dt.timedelta(hours=2 * i, seconds=rng.randrange(60)))
    trail.flush()
    return trail.records(limit=10_000)


def chain_text(chain: Any) -> str | None:
    """The report's rendering of a chain (NULL when empty or absent)."""
    if not chain:
        return None
    return " > ".join(f"{e['principal']} ({e['via']})" if e["via"] else e["principal"]
                      for e in chain)


def expected(records: Iterable[AuditRecord], *, since: dt.datetime | None = None,
             until: dt.datetime | None = None,
             principal: str | None = None) -> dict[tuple[Any, ...], dict[str, Any]]:
    """``delegated_actions`` in plain Python: ``(actor, on_behalf_of, chain) -> figures``."""
    groups: dict[tuple[Any, ...], list[AuditRecord]] = defaultdict(list)
    for r in records:
        chain = r.delegation_chain or []
        if not (r.acting_as or chain):
            continue
        if (since and r.timestamp < since) or (until and r.timestamp >= until):
            continue
        names = {r.user_id, r.acting_as, *(e["principal"] for e in chain)}
        if principal is not None and principal not in names:
            continue
        groups[(r.user_id, r.acting_as, chain_text(chain))].append(r)
    return {key: {
        "chain_length": len(rs[0].delegation_chain or []),
        "actions": len(rs),
        "succeeded": sum(r.success for r in rs),
        "failed": sum(not r.success for r in rs),
        "action_types": sorted({r.action for r in rs}),
        "auth_methods": sorted({r.auth_method for r in rs if r.auth_method}) or None,
        "first_at": min(r.timestamp for r in rs),
        "last_at": max(r.timestamp for r in rs),
    } for key, rs in groups.items()}


def report_rows(analytics: AuditAnalytics, **params: Any) -> dict[tuple[Any, ...], dict[str, Any]]:
    relation = analytics.report("delegated_actions", **params)
    out = {}
    for row in relation.fetchall():
        values = dict(zip(relation.columns, row, strict=True))
        out[(values.pop("actor"), values.pop("on_behalf_of"), values.pop("chain"))] = values
    return out


@pytest.fixture
def identities(make_trail: Callable[..., AuditTrail]) -> list[AuditRecord]:
    return write_identities(make_trail(batch_size=512))


def test_report_header_serves_access_controls() -> None:
    report = get_report("delegated_actions")
    assert {"SOC 2 CC6.1", "ISO 27001 A.5.15", "ISO 27001 A.8.2"} <= set(report.controls)
    assert [p.name for p in report.params] == ["since", "until", "principal"]
    assert not any(p.required for p in report.params)


def test_columns_are_visible_to_queries(store_url: str,
                                        identities: list[AuditRecord]) -> None:
    with AuditAnalytics(store_url) as analytics:
        types = dict(analytics.sql("SELECT column_name, column_type FROM "
                                   "(DESCRIBE audit_trails)").fetchall())
        assert types["auth_method"] == "VARCHAR" and types["delegation_chain"] == "JSON"
        got = {r[0]: (r[1], None if r[2] is None else json.loads(r[2])) for r in analytics.sql(
            "SELECT id, auth_method, delegation_chain FROM audit_trails").fetchall()}
    assert got == {r.id: (r.auth_method, r.delegation_chain) for r in identities}
    assert any(chain for _, chain in got.values())


def test_delegated_actions(store_url: str, identities: list[AuditRecord]) -> None:
    want = expected(identities)
    assert len(want) >= 6  # chains, acting_as alone, both, for two actors
    assert {key[2] for key in want} >= {None, chain_text(ALICE_VIA_SVC),
                                        chain_text(BOB_VIA_TWO), "agent-9"}
    with AuditAnalytics(store_url) as analytics:
        assert report_rows(analytics) == want
        bob = report_rows(analytics, principal="bob")
        assert bob == expected(identities, principal="bob") and bob
        assert all(key[2] == chain_text(BOB_VIA_TWO) for key in bob)
        carol = report_rows(analytics, principal="carol")
        assert carol == expected(identities, principal="carol") and carol
        since, until = START + dt.timedelta(days=3), START + dt.timedelta(days=6)
        window = report_rows(analytics, since=since.isoformat(), until=until.isoformat())
        assert window == expected(identities, since=since, until=until) and window
    # records with neither a chain nor acting_as are not delegated
    plain = [r for r in identities if not r.acting_as and not r.delegation_chain]
    assert plain and sum(v["actions"] for v in want.values()) == len(identities) - len(plain)


def test_delegated_actions_over_archives(tmp_path: Path, store_url: str,
                                         identities: list[AuditRecord]) -> None:
    with AuditAnalytics(store_url) as analytics:
        before = report_rows(analytics)
    engine = create_store_engine(store_url)
    try:
        pruned = prune(engine, START + dt.timedelta(days=5), tmp_path / "archive")
    finally:
        engine.dispose()
    assert 0 < pruned.archived < len(identities)
    with AuditAnalytics(store_url) as live_only:
        assert report_rows(live_only) != before  # the archived half is gone from the store
    with AuditAnalytics(store_url, archive_dir=tmp_path / "archive") as analytics:
        assert report_rows(analytics) == before == expected(identities)


OLD_ROW = {"chain_length": 0, "actions": 1, "succeeded": 1, "failed": 0,
           "action_types": ["READ"], "auth_methods": None,
           "first_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
           "last_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}


def test_archived_rows_from_before_the_columns_read_as_null(
        tmp_path: Path, store_url: str, make_trail: Callable[..., AuditTrail]) -> None:
    trail = make_trail()
    trail.record("READ", user_id="erin")  # not delegated: no row of the report
    trail.flush()
    archive = tmp_path / "archive"
    archive.mkdir()
    duckdb.sql(
        "SELECT 'old-1' AS id, TIMESTAMPTZ '2025-01-01 00:00:00+00' AS timestamp, "
        "'READ' AS action, 'svc-old' AS user_id, 'frank' AS acting_as, TRUE AS success, "
        "FALSE AS requires_review, 2 AS schema_version"
    ).write_parquet(str(archive / "old.parquet"))
    with AuditAnalytics(store_url, archive_dir=archive) as analytics:
        assert analytics.sql("SELECT id, auth_method, delegation_chain FROM audit_trails "
                             "WHERE id = 'old-1'").fetchall() == [("old-1", None, None)]
        assert report_rows(analytics) == {("svc-old", "frank", None): OLD_ROW}


def test_live_rows_from_before_migration_0008_read_as_null(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_store_engine(url)
    try:
        upgrade(engine, "0007")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO audit_trails (id, timestamp, action, user_id, acting_as, "
                "requires_review, success, schema_version) VALUES ('old-1', "
                "'2025-01-01 00:00:00.000000', 'READ', 'svc-old', 'frank', 0, 1, 2)"))
        upgrade(engine)
    finally:
        engine.dispose()
    trail = AuditTrail(url)
    try:
        (old,) = trail.records()
        assert (old.id, old.auth_method, old.delegation_chain) == ("old-1", None, None)
    finally:
        trail.shutdown()
    with AuditAnalytics(url) as analytics:
        assert analytics.sql("SELECT id, auth_method, delegation_chain FROM audit_trails"
                             ).fetchall() == [("old-1", None, None)]
        assert report_rows(analytics) == {("svc-old", "frank", None): OLD_ROW}
