"""Several verify processes find exactly what one process finds, across range boundaries."""

from __future__ import annotations

import pytest
from integrity_support import execute, verify
from sqlalchemy import Engine

from otel_audit import AuditTrail
from otel_audit.integrity import parallel


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "MIN_CHUNK", 4)  # 20 records: five ranges per stream


def _both(engine: Engine) -> tuple[list[tuple[str, int | None]], list[tuple[str, int | None]]]:
    one = verify(engine, workers=1)
    two = verify(engine, workers=2)
    assert (one.records, one.streams, one.erased) == (two.records, two.streams, two.erased)
    return ([(f.kind, f.seq) for f in one.findings], [(f.kind, f.seq) for f in two.findings])


def test_parallel_verify_matches_single(small_chunks: None, chained: AuditTrail,
                                        engine: Engine) -> None:
    one, two = _both(engine)
    assert one == two == []
    execute(engine, "UPDATE audit_trails SET action = 'X' WHERE seq IN (3, 5)")  # inside, edge
    execute(engine, "DELETE FROM audit_trails WHERE seq IN (8, 9)")  # across a boundary
    execute(engine, "UPDATE audit_trails SET hash = :h WHERE seq = 12", h="ab" * 32)
    execute(engine, "DELETE FROM audit_trails WHERE seq = 1")
    one, two = _both(engine)
    assert one == two
    assert ("modified", 3) in one and ("modified", 5) in one
    assert ("deleted", 8) in one and ("deleted", 1) in one
