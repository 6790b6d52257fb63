"""Fixtures for the OTLP ingest server: a trail on each store, receivers, a client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from otlp_helpers import running

from otel_audit import AuditTrail
from otel_audit.server import IngestApp


@pytest.fixture
def ingest_trail(make_trail: Callable[..., AuditTrail]) -> AuditTrail:
    """A trail on the parametrised store (SQLite and PostgreSQL)."""
    return make_trail(service_name="ingest")


@pytest.fixture
def make_app(ingest_trail: AuditTrail) -> Callable[..., IngestApp]:
    """Factory of receivers on ``ingest_trail`` acknowledging after the store commit."""

    def factory(**kwargs: Any) -> IngestApp:
        kwargs.setdefault("ack_mode", "sync")
        return IngestApp(ingest_trail, **kwargs)

    return factory


@pytest.fixture
def client(make_app: Callable[..., IngestApp]) -> Iterator[httpx.Client]:
    """A client of a receiver (no token) served on an ephemeral loopback port."""
    with running(make_app()) as c:
        yield c
