"""Fixtures of the analytics tests: a fixture trail on each store and DuckDB over it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fixture_trail import write_fixture

from otel_audit import AuditTrail
from otel_audit.analytics import AuditAnalytics
from otel_audit.record import AuditRecord


@pytest.fixture
def fixture_records(make_trail: Callable[..., AuditTrail]) -> list[AuditRecord]:
    """The fixture trail written to the parametrised store, as stored."""
    return write_fixture(make_trail(batch_size=1024))


@pytest.fixture
def analytics(store_url: str, fixture_records: list[AuditRecord]) -> Iterator[AuditAnalytics]:
    """DuckDB attached read-only to the store holding the fixture trail."""
    with AuditAnalytics(store_url) as found:
        yield found
