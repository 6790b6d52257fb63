"""Fixtures of the capture tests: real providers with in-memory exporters."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler
from otel_capture_helpers import Logs, Tracing


@pytest.fixture
def make_tracing() -> Iterator[Callable[[Sampler], Tracing]]:
    """Factory of tracer providers (shut down after the test)."""
    made: list[Tracing] = []

    def factory(sampler: Sampler = ALWAYS_ON) -> Tracing:
        tracing = Tracing(sampler)
        made.append(tracing)
        return tracing

    yield factory
    for tracing in made:
        tracing.provider.shutdown()


@pytest.fixture
def tracing(make_tracing: Callable[[Sampler], Tracing]) -> Tracing:
    """An always-sampling tracer provider with an in-memory exporter."""
    return make_tracing(ALWAYS_ON)


@pytest.fixture
def logs() -> Iterator[Logs]:
    """A LoggerProvider with an in-memory exporter."""
    made = Logs()
    yield made
    made.provider.shutdown()
