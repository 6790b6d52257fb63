"""Layout 3 and hash format ``otel-audit/3``: the identity fields (``auth_method``,
``delegation_chain``) stored, normalised, hashed and verified on both stores; rows of
the earlier formats keep verifying next to them, also in a store migrated from 0007.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from integrity_support import KEY, execute, kinds, verify
from sqlalchemy import Engine, text

from otel_audit import AuditTrail
from otel_audit.integrity.canonical import (
    GENESIS_HASH,
    PUBLIC_FORMAT,
    canonical_stored_json,
    chain_hash,
    payload_parts,
    row_version,
)
from otel_audit.integrity.chain import ChainSealer
from otel_audit.record import NORMALISATION_KEY, AuditRecord, normalise
from otel_audit.store.migrate import upgrade
from otel_audit.store.schema import ROW_COLUMNS
from otel_audit.store.writer import PreparedRecord, chain_row, create_store_engine

CHAIN = [{"principal": "alice", "via": "session"},
         {"principal": "svc-reports", "via": "token-exchange"}]


def _delegated(trail: AuditTrail, n: int = 5) -> None:
    for i in range(n):
        trail.record("EXPORT", user_id="svc-reports", acting_as="alice",
                     auth_method="oauth2-token-exchange", delegation_chain=CHAIN,
                     resource_type="report", resource_id=f"r-{i}",
                     new_values={"rows": 12, "big": 10**17})
    trail.record("READ", user_id="bob", resource_type="report", resource_id="plain")


def _stored(engine: Engine, column: str, where: str = "resource_id = 'r-0'") -> Any:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT {column} FROM audit_trails WHERE {where}")).scalar()


def test_the_identity_fields_are_stored_and_verify(
        make_trail: Callable[..., AuditTrail], engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    _delegated(trail)
    trail.flush()
    assert _stored(engine, "auth_method") == "oauth2-token-exchange"
    chain = _stored(engine, "delegation_chain")
    assert (json.loads(chain) if isinstance(chain, str) else chain) == CHAIN
    assert _stored(engine, "schema_version") == 3
    assert _stored(engine, "delegation_chain", "resource_id = 'plain'") is None
    report = verify(engine)
    assert report.ok, report.findings
    assert report.records == 6


@pytest.mark.parametrize("column, value", [
    ("auth_method", "'password'"),
    ("acting_as", "'mallory'"),
    ("delegation_chain", """'[{"principal":"mallory","via":"session"}]'"""),
])
def test_a_changed_identity_field_is_modified(
        make_trail: Callable[..., AuditTrail], engine: Engine, column: str, value: str) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    _delegated(trail)
    trail.flush()
    if column == "delegation_chain" and engine.dialect.name == "postgresql":
        value = f"CAST({value} AS JSONB)"
    execute(engine, f"UPDATE audit_trails SET {column} = {value} WHERE resource_id = 'r-2'")
    report = verify(engine)
    assert kinds(report) == {"modified"}
    assert [f.seq for f in report.findings] == [3]


def test_a_respaced_delegation_chain_is_formatting(sqlite_url: str) -> None:
    engine = create_store_engine(sqlite_url)
    trail = AuditTrail(sqlite_url, mode="sync", hmac_key=KEY)
    _delegated(trail, 1)
    trail.shutdown()
    execute(engine, "UPDATE audit_trails SET delegation_chain = :v WHERE resource_id = 'r-0'",
            v=json.dumps(CHAIN, indent=2))
    assert verify(engine).ok
    engine.dispose()


@pytest.mark.parametrize(("value", "stored"), [
    ("alice", [{"principal": "alice", "via": ""}]),
    ({"principal": "alice", "via": "session", "scope": "read"},
     [{"principal": "alice", "via": "session"}]),
    ([{"principal": 7}, "bob", None], [{"principal": "7", "via": ""},
                                       {"principal": "bob", "via": ""},
                                       {"principal": "", "via": ""}]),
    ([{"principal": {"id": 1}, "via": ["a"]}], [{"principal": '{"id":1}', "via": '["a"]'}]),
    (12, [{"principal": "12", "via": ""}]),
])
def test_a_nonconforming_delegation_chain_is_normalised_and_noted(
        value: Any, stored: list[dict[str, str]]) -> None:
    record = AuditRecord(id="r1", timestamp=dt.datetime.now(dt.UTC), action="A",
                         user_id="u", delegation_chain=value)
    out, texts = normalise(record)
    assert out.delegation_chain == stored
    assert texts["delegation_chain"] == json.dumps(stored, separators=(",", ":"),
                                                   sort_keys=True)
    notes = out.context[NORMALISATION_KEY]
    assert [n["kind"] for n in notes if n["field"] == "delegation_chain"] == ["nonconforming"]


def test_a_conforming_delegation_chain_is_kept_as_is() -> None:
    record = AuditRecord(id="r1", timestamp=dt.datetime.now(dt.UTC), action="A",
                         user_id="u", delegation_chain=CHAIN, auth_method="mtls")
    out, texts = normalise(record)
    assert out.delegation_chain == CHAIN and out.context is None
    assert json.loads(texts["delegation_chain"] or "") == CHAIN


def test_the_sealer_raises_every_record_to_format_3() -> None:
    sealer = ChainSealer(service_name="s", stream="s@h:1:a")
    sealer._resumed = True
    for version in (0, 1, 2, 3, 7):
        record = AuditRecord(id=f"r{version}", timestamp=dt.datetime.now(dt.UTC),
                             action="A", user_id="u", schema_version=version)
        [sealed] = sealer([PreparedRecord(*normalise(record))])
        assert sealed.record.schema_version == max(version, 3)
        assert sealed.row is not None and row_version(sealed.row) == 3
        parts = payload_parts(sealed.row)
        assert parts is not None and parts[0] == PUBLIC_FORMAT


def _format2_rows(stream: str, n: int, key: bytes) -> list[tuple[Any, ...]]:
    """``n`` chained rows as a release before layout 3 sealed them (format 2, keyed)."""
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        record = AuditRecord(
            id=f"0192d6a0-0000-7000-8000-00000000000{seq}",
            timestamp=dt.datetime(2026, 1, 2, 3, 4, seq, tzinfo=dt.UTC), action="UPDATE",
            user_id="alice", acting_as="bob", resource_type="invoice", resource_id=str(seq),
            new_values={"amount": 12345678901234567, "rate": 1e-7}, schema_version=2)
        record, texts = normalise(record)
        texts = {k: None if v is None else canonical_stored_json(v) for k, v in texts.items()}
        row = chain_row(record, texts, stream, seq, prev, None, "00" * 16, None)
        digest = chain_hash(row, key)
        rows.append((*row[:ROW_COLUMNS.index("hash")], digest))
        prev = digest
    return rows


def _insert_old(engine: Engine, rows: list[tuple[Any, ...]]) -> None:
    names = ROW_COLUMNS[:ROW_COLUMNS.index("hash") + 1]  # the columns of a 0007 store
    with engine.begin() as conn:
        for row in rows:
            values = dict(zip(names, row, strict=True))
            if engine.dialect.name != "sqlite":  # SQLite keeps the row's text as is
                values["timestamp"] = dt.datetime.fromisoformat(values["timestamp"] + "+00:00")
                values["requires_review"] = bool(values["requires_review"])
                values["success"] = bool(values["success"])
            conn.execute(text(
                f"INSERT INTO audit_trails ({', '.join(names)}) VALUES "
                f"({', '.join(':' + n for n in names)})"), values)


def test_a_store_migrated_from_0007_keeps_its_format_2_rows(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = create_store_engine(url)
    upgrade(engine, "0007")
    _insert_old(engine, _format2_rows("old@host:1:a", 3, KEY.encode()))
    upgrade(engine)
    with engine.connect() as conn:
        new = conn.execute(text(
            "SELECT auth_method, delegation_chain, mac FROM audit_trails")).all()
    assert new == [(None, None, None)] * 3
    trail = AuditTrail(url, mode="sync", hmac_key=KEY)
    _delegated(trail, 2)
    trail.shutdown()
    report = verify(engine)
    assert report.ok, report.findings
    assert report.records == 6
    # a format-2 row's acting_as is hashed as stored: changing it is found
    execute(engine, "UPDATE audit_trails SET acting_as = 'eve' WHERE resource_id = '2'")
    assert kinds(verify(engine)) == {"modified"}
    engine.dispose()


def test_format_2_rows_verify_next_to_format_3_rows(
        make_trail: Callable[..., AuditTrail], engine: Engine) -> None:
    trail = make_trail(hmac_key=KEY, mode="sync")
    upgrade(engine)  # the store's schema, before the trail's first write
    _insert_old(engine, _format2_rows("old@host:1:b", 3, KEY.encode()))
    _delegated(trail, 2)
    trail.flush()
    report = verify(engine)
    assert report.ok, report.findings
    # without the key only the format-2 rows fail: their hashes are keyed, format 3's not
    unkeyed = verify(engine, key=None)
    assert {(f.kind, f.stream) for f in unkeyed.findings} == {("modified", "old@host:1:b")}
    assert unkeyed.macs_unchecked == 3
    # lowering a format-3 row's schema_version to 2 changes the rules: no longer verifies
    execute(engine, "UPDATE audit_trails SET schema_version = 2 WHERE resource_id = 'r-1'")
    assert kinds(verify(engine)) == {"modified"}


@pytest.mark.parametrize("key", [None, KEY.encode()])
def test_every_sealing_path_gives_the_same_rows_for_layout_3(key: bytes | None) -> None:
    """Record by record, column by column, compiled (where built): equal rows, hashes and
    macs for varied records with the identity fields."""
    from otel_audit import _accel

    records = [AuditRecord(
        id=f"0192d6a0-0000-7000-8000-{i:012d}",
        timestamp=dt.datetime(2026, 3, 4, 5, 6, 7, i, tzinfo=dt.UTC), action="EXPORT",
        user_id=f"svc-{i}", acting_as=None if i % 3 == 0 else f"user-{i} é",
        auth_method=None if i % 4 == 0 else "oauth2",
        delegation_chain=None if i % 2 else [{"principal": f"p{i}", "via": "token-exchange"},
                                              {"principal": "Zoë \u2028", "via": "session"}],
        new_values={"n": i, "tags": ["a", None]}, requires_review=bool(i % 5 == 0))
        for i in range(12)]
    prepared = [PreparedRecord(*normalise(r)) for r in records]
    salts = "ab" * 16 * len(prepared)

    def sealer() -> ChainSealer:
        made = ChainSealer(service_name="s", stream="s@h:1:a", hmac_key=key)
        made._resumed = True
        return made

    assert sealer()._plain(prepared)
    by_record = sealer()
    one = [by_record._seal(p, salts[32 * i:32 * i + 32]) for i, p in enumerate(prepared)]
    columns = sealer()._seal_columns(prepared, salts, compiled=False)
    assert columns == one
    if _accel.speedups is not None:
        assert sealer()._seal_columns(prepared, salts, compiled=True) == one
    for p in one:
        assert p.row is not None and chain_hash(p.row, None) == p.hash
        assert (p.mac is None) is (key is None)
