"""Per-record delivery modes on ingest: the trail's mode rules over the request's ack mode."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from otlp_helpers import PROTOBUF_GZIP, audit_logs, log_request, protobuf_body, running
from typer.testing import CliRunner

from otel_audit import AuditTrail
from otel_audit.cli import app as cli_app
from otel_audit.pipeline.delivery import ModeChooser
from otel_audit.server import IngestApp
from otel_audit.server.ingest import split_by_mode
from otel_audit.server.runner import TOKEN_ENV
from otel_audit.testing import InMemoryAuditExporter


@pytest.fixture
def exporter() -> InMemoryAuditExporter:
    """The trail's destination: up until the test takes it down."""
    return InMemoryAuditExporter()


RULES: dict[str, Any] = {"mode_by_classification": {"restricted": "sync"},
                         "retry_max_backoff": 0.05}


@pytest.fixture
def ruled_trail(make_trail: Callable[..., AuditTrail], tmp_path: Path,
                exporter: InMemoryAuditExporter) -> AuditTrail:
    """A trail (both stores) where restricted records are ``sync``, sending to
    ``exporter``."""
    return make_trail(journal_dir=str(tmp_path / "journal"), exporter=exporter, **RULES)


def _mixed_request(n_plain: int = 3) -> bytes:
    """One restricted audit record (ruled ``sync``) and ``n_plain`` others."""
    logs = audit_logs(n_plain + 1)
    logs[0]["attributes"]["audit.data_classification"] = "restricted"
    logs[0]["attributes"]["user.id"] = "restricted-user"
    return protobuf_body(log_request(logs))


def test_sync_record_is_committed_before_the_answer(
        ruled_trail: AuditTrail, exporter: InMemoryAuditExporter) -> None:
    app = IngestApp(ruled_trail, ack_mode="durable")
    with running(app) as c:
        r = c.post("/v1/logs", content=_mixed_request(), headers=PROTOBUF_GZIP)
        assert r.status_code == 200
        # at the answer: the restricted record is exported, on its own and first
        restricted = exporter.get_finished_records()[0]
        assert restricted.user_id == "restricted-user"
        assert exporter.calls[0][0] == 1
        assert restricted.data_classification == "restricted"
        health = c.get("/healthz").json()
        assert health["committed_records"] == 1
        assert health["accepted_records"] == 4
        assert health["mode_by_classification"] == {"restricted": "sync"}
    assert ruled_trail.flush(30)
    records = exporter.get_finished_records()
    assert len(records) == 4 and len({r.id for r in records}) == 4


def test_store_down_is_503_and_nothing_unsafe_is_acknowledged(
        ruled_trail: AuditTrail, exporter: InMemoryAuditExporter) -> None:
    exporter.fail_all()
    body = _mixed_request()
    with running(IngestApp(ruled_trail, ack_mode="durable", retry_after=3)) as c:
        r = c.post("/v1/logs", content=body, headers=PROTOBUF_GZIP)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "3"
        stats = ruled_trail.stats()
        # nothing of the request was taken: not committed, not journalled
        assert (stats.journal_pending, stats.written) == (0, 0)
        health = c.get("/healthz").json()
        assert (health["accepted_records"], health["committed_records"]) == (0, 0)
        # a request without a restricted record is journalled and acknowledged meanwhile
        plain = protobuf_body(log_request(audit_logs(2, action="READ")))
        assert c.post("/v1/logs", content=plain, headers=PROTOBUF_GZIP).status_code == 200
        exporter.recover()
        # the sender retries the whole request: same record IDs
        assert c.post("/v1/logs", content=body, headers=PROTOBUF_GZIP).status_code == 200
    assert ruled_trail.flush(30)
    records = exporter.get_finished_records()
    assert len(records) == 6
    assert len({r.id for r in records}) == 6
    assert sum(r.user_id == "restricted-user" for r in records) == 1


def test_retry_after_a_lost_answer_stores_everything_once(
        make_trail: Callable[..., AuditTrail], tmp_path: Path) -> None:
    # the real store: its writes are what must be idempotent on the record's id
    trail = make_trail(journal_dir=str(tmp_path / "journal"), **RULES)
    body = _mixed_request(5)
    with running(IngestApp(trail, ack_mode="durable")) as c:
        for _ in range(2):  # the answer was lost: the sender sends it again
            assert c.post("/v1/logs", content=body, headers=PROTOBUF_GZIP).status_code == 200
    assert trail.flush(30)
    records = trail.records()
    assert len(records) == 6 and len({r.id for r in records}) == 6


def test_action_rule_applies_per_record(make_trail: Callable[..., AuditTrail],
                                        tmp_path: Path) -> None:
    exporter = InMemoryAuditExporter()
    trail = make_trail(mode_by_action={"DELETE": "sync"},
                       journal_dir=str(tmp_path / "journal"), exporter=exporter)
    exporter.fail_all()  # the destination is down
    with running(IngestApp(trail, ack_mode="durable")) as c:
        deletes = protobuf_body(log_request(audit_logs(1, action="DELETE")
                                            + audit_logs(2, action="UPDATE")))
        # the DELETE is sync: not acknowledged, nothing of the request taken
        assert c.post("/v1/logs", content=deletes, headers=PROTOBUF_GZIP).status_code == 503
        updates = protobuf_body(log_request(audit_logs(2, action="UPDATE")))
        # durable: acknowledged from the journal while the destination is down
        assert c.post("/v1/logs", content=updates, headers=PROTOBUF_GZIP).status_code == 200
        exporter.recover()
    assert trail.flush(30)
    assert sorted(r.action for r in exporter.get_finished_records()) == ["UPDATE", "UPDATE"]


def test_split_by_mode_never_lowers_the_floor(make_trail: Callable[..., AuditTrail]) -> None:
    trail = make_trail(mode_by_action={"READ": "async", "DELETE": "sync"},
                       mode_by_classification={"internal": "durable"})
    records = [trail.build_record(action, user_id="u") for action in ("READ", "DELETE",
                                                                       "UPDATE")]
    rules = ModeChooser(dataclasses.replace(trail.config, mode="durable"))
    sync, durable = split_by_mode(records, "durable", rules)
    assert [r.action for r in sync] == ["DELETE"]
    assert [r.action for r in durable] == ["READ", "UPDATE"]
    sync, durable = split_by_mode(records, "sync", rules)
    assert (len(sync), durable) == (3, [])
    assert split_by_mode(records, "durable", None) == ([], records)
    with pytest.raises(ValueError, match="durable"):
        split_by_mode(records, "async", rules)


# ----------------------------------------------------------------- otel-audit serve


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Stop ``serve`` where uvicorn would start serving; lists the servers it would run."""
    started: list[Any] = []
    monkeypatch.setattr("uvicorn.Server.run", lambda self, *a, **k: started.append(self))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    yield started
    for server in started:
        server.config.app.trail.shutdown(5)


def _serve(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli_app, ["serve", "--port", "0", *args], env=env)


def test_serve_takes_mode_rules_as_options_or_environment(no_run: list[Any],
                                                          tmp_path: Path) -> None:
    result = _serve("--db", f"sqlite:///{tmp_path / 'a.db'}",
                    "--mode-by-classification", "restricted=sync,internal=durable",
                    "--mode-by-action", "DELETE=sync")
    assert result.exit_code == 0, result.output
    assert "after commit for classification restricted, action DELETE" in result.stderr
    app = no_run[0].config.app
    assert isinstance(app, IngestApp)
    assert dict(app.mode_rules.by_classification) == {"restricted": "sync",
                                                      "internal": "durable"}
    assert dict(app.mode_rules.by_action) == {"DELETE": "sync"}
    result = _serve("--db", f"sqlite:///{tmp_path / 'b.db'}",
                    env={"OTEL_AUDIT_MODE_BY_CLASSIFICATION": "restricted=sync"})
    assert result.exit_code == 0, result.output
    assert "after commit for classification restricted" in result.stderr
    assert dict(no_run[1].config.app.mode_rules.by_classification) == {"restricted": "sync"}


def test_serve_refuses_bad_mode_rules_in_one_line(no_run: list[Any], tmp_path: Path) -> None:
    for args in (("--mode-by-action", "DELETE"), ("--mode-by-action", "DELETE=sometimes")):
        result = _serve("--db", f"sqlite:///{tmp_path / 'a.db'}", *args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "mode_by_action" in lines[0] or "--mode-by-action" in lines[0]
    assert no_run == []


def test_healthz_reports_no_rules_by_default(make_trail: Callable[..., AuditTrail]) -> None:
    with running(IngestApp(make_trail(), ack_mode="sync")) as c:
        health = c.get("/healthz").json()
        assert (health["mode_by_action"], health["mode_by_classification"]) == ({}, {})
        r = c.post("/v1/logs", content=protobuf_body(log_request(audit_logs(2))),
                   headers=PROTOBUF_GZIP)
        assert r.status_code == 200
        assert c.get("/healthz").json()["committed_records"] == 2  # sync ack: all of them
