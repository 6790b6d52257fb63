"""AuditTrail on SQLite and the real PostgreSQL: recording, correlation, modes, lifecycle."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

import otel_audit
from otel_audit import AuditTrail, AuditWriteError, ConfigError, RequestContext
from otel_audit.context import current_trace_ids
from otel_audit.record import NORMALISATION_KEY, SCHEMA_VERSION
from otel_audit.testing import InMemoryAuditExporter

Factory = Callable[..., AuditTrail]


def test_record_returns_the_queued_record_and_it_is_stored(trail: AuditTrail) -> None:
    rec = trail.record("UPDATE", user_id="alice", resource_type="tool", resource_id="t1",
                       old_values={"a": 1}, new_values={"a": 2})
    assert rec is not None
    assert len(rec.id) == 32 and rec.id[12] == "7"  # UUIDv7
    assert rec.timestamp.tzinfo is dt.UTC
    assert trail.flush(10)
    [stored] = trail.records()
    assert stored.id == rec.id
    assert stored.new_values == {"a": 2}
    assert stored.timestamp == rec.timestamp
    assert stored.data_classification == "internal"
    stats = trail.stats()
    assert (stats.enqueued, stats.written, stats.dropped, stats.queue_depth) == (1, 1, 0, 0)


def test_ids_are_time_ordered(trail: AuditTrail) -> None:
    ids = [trail.record("READ", user_id="u").id for _ in range(200)]  # type: ignore[union-attr]
    assert ids == sorted(ids)
    assert len(set(ids)) == 200


def test_disabled_trail_returns_none(make_trail: Factory) -> None:
    trail = make_trail(enabled=False)
    assert trail.record("READ", user_id="u") is None


def test_disabled_by_environment(make_trail: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_ENABLED", "false")
    assert make_trail().record("READ", user_id="u") is None


@pytest.mark.parametrize("sampler", [ALWAYS_ON, ALWAYS_OFF], ids=["sampled", "not-sampled"])
def test_correlation_id_is_the_trace_id(trail: AuditTrail, sampler: object) -> None:
    tracer = TracerProvider(sampler=sampler).get_tracer("t")  # type: ignore[arg-type]
    with tracer.start_as_current_span("op") as span:
        rec = trail.record("READ", user_id="u")
        ctx = span.get_span_context()
    assert rec is not None
    assert rec.trace_id == format(ctx.trace_id, "032x")
    assert rec.span_id == format(ctx.span_id, "016x")
    assert rec.correlation_id == rec.trace_id


def test_trace_ids_follow_the_current_context(trail: AuditTrail) -> None:
    # the IDs are read once per OpenTelemetry context object (otel_audit.context): every
    # record still carries the span current at its call, across nesting, threads and exit
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    def ids(rec: Any) -> tuple[str | None, str | None]:
        return rec.trace_id, rec.span_id

    def hex_ids(span: Any) -> tuple[str, str]:
        ctx = span.get_span_context()
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

    tracer = TracerProvider().get_tracer("t")
    assert ids(trail.record("READ", user_id="u")) == (None, None)
    seen: list[Any] = []
    with tracer.start_as_current_span("outer") as outer:
        first = trail.record("READ", user_id="u")
        with tracer.start_as_current_span("inner") as inner:
            nested = trail.record("READ", user_id="u")
            remote = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=True,
                                                  trace_flags=TraceFlags(0)))
            with trace.use_span(remote):
                in_remote = trail.record("READ", user_id="u")
        again = trail.record("READ", user_id="u")
        worker = threading.Thread(target=lambda: seen.append(trail.record("READ", user_id="u")))
        worker.start()
        worker.join()
        last = trail.record("READ", user_id="u")
    after = trail.record("READ", user_id="u")
    assert ids(first) == ids(again) == ids(last) == hex_ids(outer)
    assert ids(nested) == hex_ids(inner)
    assert ids(in_remote) == (format(0xABC, "032x"), format(0xDEF, "016x"))
    assert ids(seen[0]) == (None, None)  # another thread: its own (empty) context
    assert ids(after) == (None, None) and after.correlation_id == after.id  # type: ignore[union-attr]
    assert current_trace_ids() == (None, None)


def test_correlation_scope_applies_without_a_trace(trail: AuditTrail) -> None:
    with otel_audit.correlation_scope("req-123"):
        assert otel_audit.current_correlation_id() == "req-123"
        rec = trail.record("READ", user_id="u")
    assert rec is not None and rec.correlation_id == "req-123" and rec.trace_id is None
    other = trail.record("READ", user_id="u")
    assert other is not None and other.correlation_id == other.id
    assert otel_audit.current_correlation_id() is None  # reading never set anything


def test_correlation_scope_rejects_invalid_values() -> None:
    with pytest.raises(ValueError, match="64"), otel_audit.correlation_scope("x" * 65):
        pass
    with pytest.raises(ValueError), otel_audit.correlation_scope("a b"):
        pass


def test_request_context_fills_missing_fields(trail: AuditTrail) -> None:
    ctx = RequestContext(client_ip="10.0.0.1", user_agent="ua", request_path="/x",
                         request_method="POST", user_id="ctx-user")
    with otel_audit.request_scope(ctx):
        rec = trail.record("READ", client_ip="192.0.2.1")
    assert rec is not None
    assert rec.client_ip == "192.0.2.1"  # explicit wins
    assert (rec.user_agent, rec.request_path, rec.request_method, rec.user_id) == (
        "ua", "/x", "POST", "ctx-user")


def test_policy_classifies_and_flags_review(trail: AuditTrail) -> None:
    token = trail.record("READ", user_id="u", resource_type="token")
    delete = trail.record("DELETE", user_id="u", resource_type="server")
    listed = trail.record("Delete_Tool", user_id="u", resource_type="tool")
    explicit = trail.record("READ", user_id="u", resource_type="token", requires_review=False)
    plain = trail.record("READ", user_id="u", resource_type="tool")
    assert token is not None and token.data_classification == "confidential"
    assert token.requires_review
    assert delete is not None and delete.requires_review
    assert listed is not None and listed.requires_review
    assert explicit is not None and not explicit.requires_review
    assert plain is not None and not plain.requires_review


def test_action_scope_records_success_and_values(trail: AuditTrail) -> None:
    with trail.action("delete_tool", resource_type="tool", resource_id="t1",
                      user_id="bob") as a:
        a.old_values = {"name": "scraper"}
    assert a.record is not None
    assert a.record.success and a.record.old_values == {"name": "scraper"}
    assert a.record.requires_review


def test_action_scope_records_failure_and_propagates(trail: AuditTrail) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom, match="nope"), trail.action("UPDATE", user_id="bob") as a:
        raise Boom("nope")
    assert a.record is not None
    assert a.record.success is False
    assert a.record.error_message == "Boom: nope"
    trail.flush(10)
    [stored] = trail.records()
    assert stored.success is False


def test_action_scope_rejects_unknown_fields(trail: AuditTrail) -> None:
    with pytest.raises(TypeError, match="bogus"):
        trail.action("READ", bogus=1)
    scope = trail.action("READ", user_id="u")
    with pytest.raises(AttributeError):
        scope.bogus = 1


def test_bad_values_never_raise_and_are_stored_normalised(trail: AuditTrail) -> None:
    class Weird:
        def __repr__(self) -> str:
            raise RuntimeError("boom")

    cyc: dict[str, object] = {}
    cyc["me"] = cyc
    rec = trail.record(
        "UPDATE\x00", user_id="u" * 300, resource_type="tool", resource_id="r\ud800",
        old_values={"n": float("nan"), "w": Weird(), "c": cyc, "b": b"\x01"},
        new_values={"dt": dt.datetime(2026, 1, 1), "s": {"b", "a"}, "nul": "x\x00y"},
        context={"big": "z" * 100_000},
    )
    assert rec is not None
    assert trail.flush(10)
    [stored] = trail.records()
    assert stored.action == "UPDATE\ufffd"
    assert stored.user_id == "u" * 255
    assert stored.resource_id == "r\ufffd"
    assert stored.old_values["n"] == "NaN"
    assert stored.old_values["w"] == "<unrepresentable Weird>"
    assert stored.old_values["c"] == {"me": "<cycle>"}
    assert stored.new_values == {"dt": "2026-01-01T00:00:00", "s": ["a", "b"], "nul": "x\ufffdy"}
    kinds = {n["kind"] for n in stored.context[NORMALISATION_KEY]}
    assert {"nul_replaced", "truncated", "surrogate_replaced", "non_finite_float", "repr",
            "cycle", "converted", "record_truncated"} <= kinds
    assert trail.stats().failed == 0


def test_sync_mode_returns_after_commit(make_trail: Factory) -> None:
    trail = make_trail(mode="sync")
    rec = trail.record("READ", user_id="u")
    assert rec is not None
    assert trail.stats().written == 1
    assert [r.id for r in trail.records()] == [rec.id]


def test_sync_mode_raises_on_a_dead_store(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    trail = AuditTrail(f"sqlite:///{tmp_path}/a-file/audit.db", mode="sync")
    with pytest.raises(AuditWriteError):
        trail.record("READ", user_id="u")
    assert trail.stats().failed == 1
    trail.shutdown(1)


def test_sync_mode_raises_when_postgres_is_unreachable() -> None:
    trail = AuditTrail("postgresql://postgres@127.0.0.1:1/none", mode="sync")
    with pytest.raises(AuditWriteError):
        trail.record("READ", user_id="u")
    trail.shutdown(1)


def test_per_call_sync_mode(trail: AuditTrail) -> None:
    rec = trail.record("READ", user_id="u", mode="sync")
    assert rec is not None
    assert trail.stats().written == 1


def test_misconfiguration_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="mode"):
        AuditTrail("sqlite://", mode="sometimes")
    with pytest.raises(ConfigError, match="database URL"):
        AuditTrail("not a url")
    with pytest.raises(ConfigError, match="batch_size"):
        AuditTrail("sqlite://", batch_size=0)
    with pytest.raises(ConfigError, match="unknown setting"):
        AuditTrail("sqlite://", colour="blue")


def test_async_record_never_raises_on_a_dead_store() -> None:
    # without a spool (spool_max_bytes=0): the batch stays in memory, retried
    trail = AuditTrail("postgresql://postgres@127.0.0.1:1/none", retry_max_backoff=0.05,
                       flush_interval=0.01, spool_max_bytes=0)
    rec = trail.record("READ", user_id="u")
    assert rec is not None
    assert trail.flush(2.0) is False  # still retrying, record kept
    assert trail.stats().retried >= 1
    assert trail.stats().failed == 0
    trail.shutdown(0.5)
    assert trail.stats().failed == 1  # counted and logged when given up at shutdown


def test_eight_threads_ten_thousand_each(trail: AuditTrail) -> None:
    def work(n: int) -> None:
        for i in range(10_000):
            trail.record("READ", user_id=f"t{n}", resource_id=str(i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trail.flush(120)
    stats = trail.stats()
    assert (stats.written, stats.dropped, stats.failed) == (80_000, 0, 0)
    with trail.writer.engine.connect() as conn:
        from sqlalchemy import func, select

        from otel_audit.store.schema import audit_trails

        total = conn.scalar(select(func.count()).select_from(audit_trails))
        distinct = conn.scalar(select(func.count(audit_trails.c.id.distinct())))
    assert total == distinct == 80_000


def test_shutdown_flushes_everything(make_trail: Factory) -> None:
    trail = make_trail(flush_interval=60)  # only shutdown can flush before the interval
    for i in range(1000):
        trail.record("READ", user_id="u", resource_id=str(i))
    assert trail.shutdown(30)
    reader = make_trail()
    assert len(reader.records(limit=5000)) == 1000
    assert trail.record("READ", user_id="late") is not None  # after shutdown: no crash


def test_full_queue_waits_then_drops_loudly(caplog: pytest.LogCaptureFixture) -> None:
    trail = AuditTrail("postgresql://postgres@127.0.0.1:1/none", queue_size=10,
                       queue_full_timeout=0.01, retry_max_backoff=0.05,
                       spool_max_bytes=0)  # no spool to spill to
    # up to six batches of at most ten are out of the queue (one writing, four sealed
    # behind it, one being prepared): 70 records fit, the rest must be dropped
    for i in range(120):
        trail.record("READ", user_id="u", resource_id=str(i))
    stats = trail.stats()
    assert stats.dropped > 0
    assert "audit queue full" in caplog.text
    trail.shutdown(0.2)


def test_default_trail_is_created_from_the_environment(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_AUDIT_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing")
    previous = otel_audit.set_trail(None)
    try:
        trail = otel_audit.get_trail()
        assert trail is otel_audit.get_trail()
        assert trail.service_name == "billing"
        configured = otel_audit.configure(sqlite_url, service_name="other")
        assert otel_audit.get_trail() is configured
        rec = configured.record("READ", user_id="u")
        assert rec is not None and rec.service_name == "other"
        configured.shutdown()
    finally:
        otel_audit.set_trail(previous)


def test_records_keyset_pagination(trail: AuditTrail) -> None:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i in range(25):
        trail.record("READ", user_id="u", resource_id=str(i),
                     timestamp=base + dt.timedelta(seconds=i // 2))  # ties on purpose
    pages = []
    after = None
    while True:
        page = trail.records(limit=10, after=after)
        if not page:
            break
        pages.append(page)
        after = page[-1]
    seen = [r.resource_id for p in pages for r in p]
    assert len(seen) == 25 and len(set(seen)) == 25
    flat = [r for p in pages for r in p]
    assert flat == sorted(flat, key=lambda r: (r.timestamp, r.id), reverse=True)


def test_flush_waits_for_the_batch_being_committed(sqlite_url: str) -> None:
    # the worker hands batches to the store stage: a flush must see one in flight
    exporter = InMemoryAuditExporter()
    trail = AuditTrail(sqlite_url, flush_interval=0.01, exporter=exporter)
    exporter.hold()
    trail.record("READ", user_id="u")
    assert exporter.held.wait(5) and not trail.pipeline._queue  # taken off, not written
    assert trail.flush(0.2) is False
    exporter.release()
    assert trail.flush(5) is True
    assert trail.stats().written == 1
    trail.shutdown()


def test_record_rejects_an_unknown_field_name_like_any_call(trail: AuditTrail) -> None:
    # a misspelt field is a programming error, raised at the call like action()'s; values
    # of known fields, however odd, are normalised instead (see the bad-value tests)
    with pytest.raises(TypeError, match="bogus"):
        trail.record("READ", user_id="u", bogus=1)  # type: ignore[call-arg]
    assert trail.record("READ", user_id="u", trace_id="ab" * 16, span_id="cd" * 8) is not None


class _Untruthful:
    def __bool__(self) -> bool:
        raise RuntimeError("no truth value")


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_the_issues_values_are_stored_and_the_writer_keeps_going(make_trail: Factory,
                                                                   mode: str) -> None:
    import decimal

    trail = make_trail(mode=mode)
    plus5 = dt.timezone(dt.timedelta(hours=5))
    bad: list[dict[str, Any]] = [
        {"user_id": "", "context": {True: 1}},
        {"new_values": {"n": 10**5000}},
        {"new_values": {"s": {decimal.Decimal("NaN"), decimal.Decimal(1)}}},
        {"timestamp": dt.datetime(1, 1, 1, tzinfo=plus5)},
        {"success": _Untruthful()},
        {"service_name": "svc\ud800"},
    ]
    for i, fields in enumerate(bad):
        rec = trail.record("BAD", resource_id=f"bad-{i}", **fields)
        assert rec is not None
    # a record built elsewhere and submitted as it is: schema_version out of any range
    built = trail.build_record("BAD", user_id="u", resource_id="bad-schema")
    trail.submit(built._replace(schema_version=2**70))
    trail.record("GOOD", user_id="u", resource_id="good")
    assert trail.flush(10)
    stats = trail.stats()
    assert (stats.written, stats.failed, stats.dropped) == (len(bad) + 2, 0, 0)
    stored = {r.resource_id: r for r in trail.records(limit=50)}
    assert stored["bad-0"].context["true"] == 1
    assert stored["bad-0"].user_id == "unknown"
    assert stored["bad-1"].new_values == {"n": "1" + "0" * 5000}
    assert stored["bad-2"].new_values == {"s": ["1", "NaN"]}
    assert stored["bad-3"].timestamp == dt.datetime.min.replace(tzinfo=dt.UTC)
    assert stored["bad-4"].success is False
    assert stored["bad-5"].service_name == "svc\ufffd"
    assert stored["bad-schema"].schema_version == SCHEMA_VERSION
    kinds = {n["kind"] for n in stored["bad-schema"].context[NORMALISATION_KEY]}
    assert kinds == {"invalid"}


def test_a_trail_service_name_the_store_refuses_is_cleaned(
        make_trail: Factory, caplog: pytest.LogCaptureFixture) -> None:
    trail = make_trail(service_name="svc\ud800\x00")
    assert trail.service_name == "svc\ufffd\ufffd"
    trail.record("READ", user_id="u")
    assert trail.flush(10)
    [stored] = trail.records()
    assert stored.service_name == "svc\ufffd\ufffd"
    assert trail.stats().failed == 0
    # the stream name is made of it too: sealing went through
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_values_whose_own_code_raises_never_lose_the_record(trail: AuditTrail) -> None:
    class NoClass:
        @property  # type: ignore[misc]
        def __class__(self) -> type:
            raise RuntimeError("class")

        def __bool__(self) -> bool:
            raise RuntimeError("bool")

    class BadDict(dict):  # type: ignore[type-arg]
        def keys(self) -> Any:
            raise RuntimeError("keys")

        def __len__(self) -> int:
            raise RuntimeError("len")

    with otel_audit.request_scope(RequestContext(user_id="u", extra={"route": "/x"})):
        first = trail.record("UPDATE", requires_review=NoClass(), success=NoClass(),  # type: ignore[arg-type]
                             context=BadDict(a=1))
        second = trail.record("UPDATE", context=NoClass(), apply_policy=False)
    assert first is not None and second is not None
    assert trail.flush(10)
    assert trail.stats().written == 2
    stored = {r.id: r for r in trail.records()}
    assert (stored[first.id].requires_review, stored[first.id].success) == (True, False)
    assert stored[second.id].context["value"] == "<unrepresentable NoClass>"
