"""Fixtures for forwarding: a source trail with records on two streams and a receiving
``otel-audit serve`` (the ingest app on a loopback port). Helpers: forward_helpers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from forward_helpers import fill

from otel_audit import AuditTrail
from otel_audit.server import IngestApp, serve_in_thread


@pytest.fixture
def source(make_trail: Callable[..., AuditTrail], store_url: str) -> Iterator[str]:
    """The URL of a store (SQLite and PostgreSQL) holding 120 records on two streams."""
    first = make_trail(service_name="billing")
    second = make_trail(service_name="shipping")
    fill(first, 70)
    fill(second, 50, start=1000, service="shipping")
    yield store_url


@pytest.fixture
def receiver_url(tmp_path: Any) -> str:
    """A separate SQLite store for the receiving trail."""
    return f"sqlite:///{tmp_path}/receiver.db"


@pytest.fixture
def receiver(receiver_url: str) -> Iterator[Callable[..., Any]]:
    """Start an ``otel-audit serve`` app (ack after commit) on trail B; yields a starter
    returning a context manager that yields its base URL (pass ``port=`` to reuse one)."""
    trails: list[AuditTrail] = []

    def start(port: int = 0) -> Any:
        trail = AuditTrail(receiver_url, service_name="receiver", auto_migrate=True,
                           flush_interval=0.05)
        trails.append(trail)
        app = IngestApp(trail, ack_mode="sync", close_trail=True)
        return serve_in_thread(app, port=port)

    yield start
    for trail in trails:
        trail.shutdown(5)
