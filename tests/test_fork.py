"""Fork safety: a child writes its own records exactly once and never the parent's."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from otel_audit import AuditTrail
from otel_audit.store.schema import audit_trails

Factory = Callable[..., AuditTrail]


def _count(trail: AuditTrail, **where: str) -> int:
    query = select(func.count()).select_from(audit_trails)
    for key, value in where.items():
        query = query.where(audit_trails.c[key] == value)
    with trail.writer.engine.connect() as conn:
        return int(conn.scalar(query) or 0)


def _run_in_child(body: Callable[[], None]) -> None:
    """Run ``body`` in a forked child; fail unless it returns normally."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_records_land_exactly_once(make_trail: Factory) -> None:
    trail = make_trail(flush_interval=60)  # parent's records stay queued across the fork
    for i in range(500):
        trail.record("READ", user_id="parent", resource_id=str(i))
    assert trail.stats().queue_depth == 500
    def child() -> None:
        assert trail.stats().queue_depth == 0  # the parent's records are not ours
        for i in range(300):
            trail.record("READ", user_id="child", resource_id=str(i))
        assert trail.shutdown(30)

    _run_in_child(child)
    assert trail.flush(30)
    assert _count(trail, user_id="parent") == 500
    assert _count(trail, user_id="child") == 300
    assert _count(trail) == 800


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_leaves_the_parents_kept_connection_alone(make_trail: Factory) -> None:
    trail = make_trail(flush_interval=0.01)
    for i in range(100):
        trail.record("READ", user_id="parent", resource_id=str(i))
    assert trail.flush(30)
    assert trail.writer._bulk is not None  # the writer's kept connection is open
    def child() -> None:  # its own connection; the parent's is neither used nor closed
        assert trail.writer._bulk is None
        for i in range(100):
            trail.record("READ", user_id="child", resource_id=str(i))
        assert trail.shutdown(30)

    _run_in_child(child)
    for i in range(100, 200):  # the parent goes on writing on its kept connection
        trail.record("READ", user_id="parent", resource_id=str(i))
    assert trail.flush(30)
    assert trail.stats().retried == 0  # the parent's connection survived the child
    assert _count(trail, user_id="parent") == 200
    assert _count(trail, user_id="child") == 100


def _child_records(url: str, n: int) -> None:
    from otel_audit import get_trail

    trail = get_trail()
    for i in range(n):
        trail.record("READ", user_id=f"proc-{os.getpid()}", resource_id=str(i))
    # no explicit flush: multiprocessing exits through os._exit, the trail's
    # finaliser must still drain the queue


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_multiprocessing_fork_children_flush_on_exit(
    make_trail: Factory, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import otel_audit

    monkeypatch.setenv("OTEL_AUDIT_DATABASE_URL", store_url)
    parent = make_trail()
    previous = otel_audit.set_trail(parent)
    try:
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_child_records, args=(store_url, 250)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    finally:
        otel_audit.set_trail(previous)
    assert _count(parent) == 750
