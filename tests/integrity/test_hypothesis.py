"""Random sequences of tampering operations: whatever changes, verify says so.

The oracle is the stored state itself: if the rows (or their number) differ from the
untouched trail after the operations, verification with the exported checkpoints must
report at least one finding; if the operations cancelled out, it must pass.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from integrity_support import KEY, write_records
from sqlalchemy import Engine, text

from otel_audit import AuditTrail
from otel_audit.integrity.checkpoints import (
    create_checkpoints,
    export_checkpoints,
    latest_checkpoints,
    load_checkpoint_file,
)
from otel_audit.integrity.verify import verify_trail
from otel_audit.store.writer import create_store_engine

N = 12
_FIELDS = ("action", "user_id", "user_email", "resource_id", "team_id", "client_ip",
           "user_agent", "pii_salt", "prev_hash", "hash", "timestamp", "service_name")

ops = st.lists(st.one_of(
    st.tuples(st.just("modify"), st.integers(1, N), st.sampled_from(_FIELDS)),
    st.tuples(st.just("json"), st.integers(1, N), st.sampled_from(["old_values", "context"])),
    st.tuples(st.just("pii"), st.integers(1, N),
              st.sampled_from(['{"k":["phone"]}', '{"k":[]}', "not json",
                               '{"d":"' + "0" * 64 + '"}'])),
    st.tuples(st.just("delete"), st.integers(1, N)),
    st.tuples(st.just("swap"), st.integers(1, N), st.integers(1, N)),
    st.tuples(st.just("truncate"), st.integers(1, N)),
    st.tuples(st.just("insert"), st.integers(1, N + 2)),
), min_size=1, max_size=5)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A chained SQLite trail of N records and its exported checkpoints."""
    root = tmp_path_factory.mktemp("hyp")
    url = f"sqlite:///{root}/template.db"
    trail = AuditTrail(url, hmac_key=KEY, mode="sync", auto_migrate=True)
    write_records(trail, N)
    trail.shutdown()
    engine = create_store_engine(url)
    create_checkpoints(engine)
    export_checkpoints(latest_checkpoints(engine), root / "cp.json")
    engine.dispose()
    return root / "template.db", root / "cp.json"


def _snapshot(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT * FROM audit_trails ORDER BY id"))]


def _apply(engine: Engine, op: tuple[Any, ...], counter: int) -> None:
    kind = op[0]
    with engine.begin() as conn:
        if kind == "modify":
            value = f"2025-01-01 00:00:0{counter % 10}.000000" if op[2] == "timestamp" \
                else f"t{counter}"
            conn.execute(text(f"UPDATE audit_trails SET {op[2]} = :v WHERE seq = :s"),
                         {"v": value, "s": op[1]})
        elif kind == "json":
            conn.execute(text(f"UPDATE audit_trails SET {op[2]} = :v WHERE seq = :s"),
                         {"v": f'{{"forged":{counter}}}', "s": op[1]})
        elif kind == "pii":
            conn.execute(text("UPDATE audit_trails SET pii = :v WHERE seq = :s"),
                         {"v": op[2], "s": op[1]})
        elif kind == "delete":
            conn.execute(text("DELETE FROM audit_trails WHERE seq = :s"), {"s": op[1]})
        elif kind == "swap" and op[1] != op[2]:
            conn.execute(text("UPDATE audit_trails SET seq = -1 WHERE seq = :a"), {"a": op[1]})
            conn.execute(text("UPDATE audit_trails SET seq = :a WHERE seq = :b"),
                         {"a": op[1], "b": op[2]})
            conn.execute(text("UPDATE audit_trails SET seq = :b WHERE seq = -1"), {"b": op[2]})
        elif kind == "truncate":
            conn.execute(text("DELETE FROM audit_trails WHERE seq >= :s"), {"s": op[1]})
        elif kind == "insert":
            conn.execute(text(
                "INSERT OR IGNORE INTO audit_trails (id, timestamp, action, user_id, "
                "requires_review, success, schema_version, stream, seq, prev_hash, hash) "
                "SELECT :id, timestamp, 'FORGED', user_id, requires_review, success, "
                "schema_version, stream, :s, hash, hash FROM audit_trails ORDER BY seq DESC "
                "LIMIT 1"), {"id": f"forged-{counter}", "s": op[1]})


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=ops)
def test_any_tampering_is_detected(template: tuple[Path, Path], tmp_path: Path,
                                   operations: list[tuple[Any, ...]]) -> None:
    db, checkpoints = template
    target = tmp_path / f"case-{abs(hash(tuple(operations)))}.db"
    shutil.copy(db, target)
    engine = create_store_engine(f"sqlite:///{target}")
    try:
        before = _snapshot(engine)
        for counter, op in enumerate(operations):
            _apply(engine, op, counter)
        changed = _snapshot(engine) != before
        report = verify_trail(engine, key=KEY.encode(),
                              checkpoints=load_checkpoint_file(checkpoints))
        assert report.ok is not changed, (operations, report.findings)
    finally:
        engine.dispose()
        target.unlink()
