"""The forwarder's health signals: otel_audit.forward.sent, .retries, .rejected, .lag."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from forward_helpers import engine_of, rows
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_audit.forward import Forwarder, ForwardItem, PermanentError, RetryableError
from otel_audit.forward import runner as forward_runner


class Flaky:
    """Fails its first send (retryable) and refuses one record for good."""

    name = "flaky"

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.calls = 0
        self.got: list[str] = []

    def send(self, items: Sequence[ForwardItem]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RetryableError("busy", retry_after=0)
        if any(i.record.id == self.refused for i in items):
            raise PermanentError("HTTP 400 bad record")
        self.got.extend(i.record.id for i in items)

    def close(self) -> None:
        pass


def test_forward_metrics(source: str, monkeypatch: pytest.MonkeyPatch,
                         caplog: pytest.LogCaptureFixture) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    # instruments are created once per process on the global provider: point them here
    monkeypatch.setattr(forward_runner, "_instruments", {})
    monkeypatch.setattr(metrics, "get_meter", provider.get_meter)
    refused = sorted(rows(source))[5]
    destination = Flaky(refused)
    engine = engine_of(source)
    try:
        forwarder = Forwarder(engine, destination, batch_size=16, backoff_base=0.01)
        with caplog.at_level("ERROR", logger="otel_audit.forward"):
            summary = forwarder.run(once=True)
        data = reader.get_metrics_data()
    finally:
        engine.dispose()
        provider.shutdown()
    found = {m.name: sum(p.value for p in m.data.data_points)
             for rm in data.resource_metrics for sm in rm.scope_metrics
             for m in sm.metrics}
    assert found["otel_audit.forward.sent"] == 119 == summary.sent
    assert found["otel_audit.forward.retries"] == 1 == summary.retries
    assert found["otel_audit.forward.rejected"] == 1 == summary.rejected
    assert found["otel_audit.forward.lag"] == 0
    assert refused in caplog.text and "refused for good" in caplog.text
    assert sorted(destination.got) == sorted(set(rows(source)) - {refused})
