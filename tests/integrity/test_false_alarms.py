"""No false alarms: every JSON value verifies; changed spellings, values and duplicate keys
are reported; rows sealed under the first rules keep verifying after the upgrade."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from integrity_support import BASE, KEY, execute, kinds, verify
from sqlalchemy import Engine, create_engine, text

from otel_audit import AuditTrail
from otel_audit.integrity.canonical import FORMAT, GENESIS_HASH, chain_hash
from otel_audit.integrity.canonical_json import v1_stored_json
from otel_audit.record import AuditRecord, normalise
from otel_audit.store.migrate import upgrade
from otel_audit.store.schema import ROW_COLUMNS
from otel_audit.store.writer import chain_row

#: Every kind of JSON scalar a caller can pass, and strings that look like numbers.
SCALARS: list[Any] = [
    12, 2**63, -(2**63) - 1, 10**40, -0.0, 1e16, 1.5, 0.1, 1e-7, 5e-324, 1.7976931348623157e308,
    12345678901234567, True, False, None, "12", "1e-1", "-0.0", "12345678901234567", "",
]


@pytest.fixture
def lite(sqlite_url: str) -> Iterator[Callable[..., AuditTrail]]:
    """Factory of sync trails with the tests' key on this test's SQLite file."""
    trails: list[AuditTrail] = []

    def factory(**settings: Any) -> AuditTrail:
        trail = AuditTrail(sqlite_url, auto_migrate=True, hmac_key=KEY, mode="sync",
                           **settings)
        trails.append(trail)
        return trail

    yield factory
    for trail in trails:
        trail.shutdown(5)


def _stored(engine: Engine, record_id: str, column: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT CAST({column} AS TEXT) FROM audit_trails "
                                 "WHERE id = :id"), {"id": record_id}).scalar()


def _same(read: Any, written: Any) -> bool:
    """Equal values of equal types (an int stays an int: exact), -0.0 read as 0.0."""
    if isinstance(written, float) and not isinstance(read, float):
        # an exponent float is stored without exponent, as PostgreSQL prints it (1e16 is
        # 10000000000000000): the same decimal value, read back as an int
        return type(read) is int and float(read) == written
    if isinstance(written, list):
        return isinstance(read, list) and all(map(_same, read, written))
    if isinstance(written, dict):
        return isinstance(read, dict) and read.keys() == written.keys() and all(
            _same(read[k], written[k]) for k in written)
    return type(read) is type(written) and read == written


def test_every_json_scalar_round_trips_and_verifies(make_trail: Callable[..., AuditTrail],
                                                    engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    for i, value in enumerate(SCALARS):
        trail.record("UPDATE", user_id="u", resource_id=str(i), new_values=value,
                     old_values=[value], changes={"v": value, "w": [value, {"x": value}]},
                     context={"email": value} if i % 2 else None)
    records = {r.resource_id: r for r in trail.records(limit=100)}
    for i, value in enumerate(SCALARS):
        record = records[str(i)]
        assert _same(record.new_values, value), (value, record.new_values)
        assert _same(record.old_values, [value])
        assert _same(record.changes, {"v": value, "w": [value, {"x": value}]})
    report = verify(engine)
    assert report.ok, report.findings
    assert report.records == len(SCALARS)
    # exact on every store: the stored text is the number, in full
    big = next(r for r in records.values() if r.new_values == 10**40)
    assert _stored(engine, big.id, "new_values") == str(10**40)


def test_sqlite_stores_bare_numbers_as_their_text(lite: Callable[..., AuditTrail],
                                                   sqlite_url: str) -> None:
    trail = lite()
    for value in (12, 1e16, -0.0, 1e-7, 2**63):
        trail.record("UPDATE", user_id="u", new_values=value)
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        stored = conn.execute("SELECT typeof(new_values), new_values FROM audit_trails "
                              "ORDER BY seq").fetchall()
    assert stored == [("text", "12"), ("text", "10000000000000000"), ("text", "0.0"),
                      ("text", "0.0000001"), ("text", str(2**63))]


def _one(trail: AuditTrail, value: Any) -> str:
    return trail.record("UPDATE", user_id="u", new_values=value).id


def test_a_changed_number_is_reported(make_trail: Callable[..., AuditTrail],
                                      engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    rid = _one(trail, {"amount": 12345678901234567, "rows": 12})
    _one(trail, {"after": 1})
    assert verify(engine).ok
    cast = "CAST(:v AS JSONB)" if engine.dialect.name == "postgresql" else ":v"
    execute(engine, f"UPDATE audit_trails SET new_values = {cast} WHERE id = :id",
            v='{"amount":12345678901234568,"rows":12}', id=rid)
    report = verify(engine)
    assert [(f.kind, f.record_id) for f in report.findings] == [("modified", rid)]


@pytest.mark.parametrize("rewritten", [
    '{"ratio":1e-1}',      # the same value, another spelling
    '{"ratio":0.10}',      # a decimal written with another scale
    '{"ratio":1E-1}',
    '{"ratio": 0.1}',      # whitespace: SQLite keeps it, readers print it
    '{"ratio":0.1,"ratio":0.1}',
])
def test_sqlite_a_respelled_number_is_reported(lite: Callable[..., AuditTrail],
                                               sqlite_url: str, rewritten: str) -> None:
    trail = lite()
    rid = _one(trail, {"ratio": 0.1})
    engine = create_engine(sqlite_url)
    try:
        execute(engine, "UPDATE audit_trails SET new_values = :v WHERE id = :id",
                v=rewritten, id=rid)
        report = verify(engine)
    finally:
        engine.dispose()
    if rewritten == '{"ratio": 0.1}':  # formatting only: every reader sees the same value
        assert report.ok
    else:
        assert [(f.kind, f.record_id) for f in report.findings] == [("modified", rid)]


def test_sqlite_a_duplicate_key_is_reported(lite: Callable[..., AuditTrail],
                                            sqlite_url: str) -> None:
    trail = lite(personal_keys=["email"])
    rid = _one(trail, {"rows": 12, "user": "x"})
    pid = _one(trail, {"email": "a@example.com", "rows": 1})
    engine = create_engine(sqlite_url)
    try:
        execute(engine, "UPDATE audit_trails SET new_values = :v WHERE id = :id",
                v='{"rows":99999,"rows":12,"user":"x"}', id=rid)
        execute(engine, "UPDATE audit_trails SET new_values = :v WHERE id = :id",
                v='{"email":"a@example.com","rows":5,"rows":1}', id=pid)
        with engine.connect() as conn:  # what SQLite's readers now see
            seen = conn.execute(text("SELECT json_extract(new_values, '$.rows') "
                                     "FROM audit_trails WHERE id = :id"), {"id": rid}).scalar()
        report = verify(engine)
    finally:
        engine.dispose()
    assert seen == 99999
    assert sorted((f.kind, f.record_id) for f in report.findings) == sorted(
        [("modified", rid), ("modified", pid)])


@pytest.mark.postgres
def test_postgres_jsonb_keeps_the_hashed_value_of_a_duplicate_key(pg_url: str) -> None:
    """JSONB keeps the last of two equal keys: a duplicate written in can only leave the
    hashed value (verify passes, every reader sees it) or change it (reported)."""
    trail = AuditTrail(pg_url, hmac_key=KEY, mode="sync")
    rid = _one(trail, {"rows": 12})
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        execute(engine, "UPDATE audit_trails SET new_values = CAST(:v AS JSONB) WHERE id = :id",
                v='{"rows":99999,"rows":12}', id=rid)
        assert verify(engine).ok
        with engine.connect() as conn:
            assert conn.execute(text("SELECT new_values->>'rows' FROM audit_trails")).scalar() \
                == "12"
        execute(engine, "UPDATE audit_trails SET new_values = CAST(:v AS JSONB) WHERE id = :id",
                v='{"rows":12,"rows":99999}', id=rid)
        assert kinds(verify(engine)) == {"modified"}
    finally:
        trail.shutdown(5)
        engine.dispose()


@pytest.mark.postgres
def test_postgres_json_column_holding_a_duplicate_key_is_reported(pg_url: str) -> None:
    """Only JSONB cannot hold a duplicate key: a column changed to ``json`` can, and the
    verifier then looks for one again."""
    trail = AuditTrail(pg_url, hmac_key=KEY, mode="sync")
    rid = _one(trail, {"rows": 12})
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        execute(engine, "ALTER TABLE audit_trails ALTER COLUMN new_values TYPE json")
        assert verify(engine).ok
        execute(engine, "UPDATE audit_trails SET new_values = CAST(:v AS json) WHERE id = :id",
                v='{"rows":99999,"rows":12}', id=rid)
        assert [(f.kind, f.record_id) for f in verify(engine).findings] == [("modified", rid)]
    finally:
        execute(engine, "ALTER TABLE audit_trails ALTER COLUMN new_values TYPE jsonb "
                "USING new_values::jsonb")
        trail.shutdown(5)
        engine.dispose()


# ---------------------------------------------------------------- rows of the first format


#: The row layout before migration 0008: up to and including ``hash``.
_OLD_LAYOUT = ROW_COLUMNS.index("hash") + 1


def _v1_rows(count: int, values: list[Any]) -> list[tuple[Any, ...]]:
    """Chain rows exactly as the format-1 sealer made them (schema_version 1)."""
    rows: list[tuple[Any, ...]] = []
    prev = GENESIS_HASH
    for seq, value in enumerate(values[:count], start=1):
        record = AuditRecord(id=f"old-{seq}", timestamp=BASE, action="UPDATE", user_id="u",
                             new_values=value, context={"big": 12345678901234567, "r": 0.5},
                             schema_version=1)
        record, texts = normalise(record)
        texts = {k: None if v is None else v1_stored_json(v) for k, v in texts.items()}
        row = chain_row(record, texts, "old-stream", seq, prev, None, "ab" * 16, None)
        digest = chain_hash(row, KEY.encode(), canonicalise=False)
        rows.append((*row[:_OLD_LAYOUT - 1], digest))  # the columns of a store of then
        prev = digest
    return rows


_OLD_VALUES: list[Any] = [12, 1.5, -0.0, 1e16, 12345678901234567, 2**63, 10**40, 0.1, 1e-7,
                          {"n": 10**20}, [5.0]]


def _insert(path: str, rows: list[tuple[Any, ...]]) -> None:
    names = ROW_COLUMNS[:_OLD_LAYOUT]
    with sqlite3.connect(path) as conn:
        conn.executemany(f"INSERT INTO audit_trails ({', '.join(names)}) VALUES "
                         f"({', '.join('?' * len(names))})", rows)


def test_format_1_rows_keep_verifying_after_the_sqlite_migration(tmp_path: Path) -> None:
    """Rows sealed before exact numbers, in a store whose JSON columns had NUMERIC
    affinity, verify after migration 0004 — and new rows follow under format 3."""
    path = str(tmp_path / "old.db")
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine, "0003_seals")
    rows = _v1_rows(len(_OLD_VALUES), _OLD_VALUES)
    assert all(r[0] == "old-stream" for r in rows) and FORMAT == "otel-audit/1"
    _insert(path, rows)
    with sqlite3.connect(path) as conn:  # what the old schema did to bare numbers
        kinds_before = {t for (t,) in conn.execute("SELECT typeof(new_values) FROM audit_trails")}
    assert {"integer", "real"} <= kinds_before
    upgrade(engine)
    trail = AuditTrail(f"sqlite:///{path}", hmac_key=KEY, mode="sync",
                       chain_stream="old-stream")
    try:
        for value in (10**40, 1e-7, -0.0, {"n": 12345678901234567}):
            trail.record("UPDATE", user_id="u", new_values=value)
    finally:
        trail.shutdown(5)
    report = verify(engine)
    assert report.ok, report.findings
    assert report.records == len(_OLD_VALUES) + 4
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT seq, schema_version FROM audit_trails "
                                     "ORDER BY seq")).all()
    assert [v for _, v in versions] == [1] * len(_OLD_VALUES) + [3] * 4
    # an old row is still protected: its value changed is reported
    execute(engine, "UPDATE audit_trails SET context = :v WHERE seq = 2",
            v='{"big":12345678901234568,"r":0.7}')
    assert [(f.kind, f.seq) for f in verify(engine).findings] == [("modified", 2)]
    # lowering a new row's schema_version to choose the old rules is reported
    execute(engine, "UPDATE audit_trails SET schema_version = 1 WHERE seq = :s",
            s=len(_OLD_VALUES) + 1)
    assert ("modified", len(_OLD_VALUES) + 1) in [(f.kind, f.seq)
                                                  for f in verify(engine).findings]
    engine.dispose()


@pytest.mark.postgres
def test_format_1_rows_keep_verifying_on_postgres(pg_url: str) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        names = ROW_COLUMNS[:_OLD_LAYOUT]
        rows = _v1_rows(len(_OLD_VALUES), _OLD_VALUES)
        casts = ["CAST(%s AS JSONB)" if n in ("old_values", "new_values", "changes", "context")
                 else "CAST(%s AS BOOLEAN)" if n in ("requires_review", "success")
                 else "CAST(%s AS TIMESTAMPTZ)" if n == "timestamp" else "%s"
                 for n in names]
        typed = [tuple(bool(v) if names[i] in ("requires_review", "success") else
                       (v + "+00:00" if names[i] == "timestamp" else v)
                       for i, v in enumerate(r)) for r in rows]
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur:
                cur.executemany(f"INSERT INTO audit_trails ({', '.join(names)}) "
                                f"VALUES ({', '.join(casts)})", typed)
            raw.commit()
        finally:
            raw.close()
        trail = AuditTrail(pg_url, hmac_key=KEY, mode="sync", chain_stream="old-stream")
        try:
            for value in (10**40, 1e-7, -0.0):
                trail.record("UPDATE", user_id="u", new_values=value)
        finally:
            trail.shutdown(5)
        report = verify(engine)
        assert report.ok, report.findings
        assert report.records == len(_OLD_VALUES) + 3
    finally:
        engine.dispose()
