"""The shared audit-entry cases against ``is_audit`` and the ingest server."""

from __future__ import annotations

import pytest
from audit_cases import AUDIT_CASES
from otlp_helpers import log_request

from otel_audit import AuditTrail
from otel_audit.mapping import is_audit
from otel_audit.server import otlp, records_from_request


@pytest.mark.parametrize(("log", "expected"), [
    pytest.param(log, expected, id=repr(log)) for log, expected in AUDIT_CASES])
def test_is_audit(log: dict[str, object], expected: bool) -> None:
    attributes = log.get("attributes")
    assert isinstance(attributes, dict | None)
    event_name = log.get("event_name")
    assert isinstance(event_name, str | None)
    assert is_audit(attributes, event_name) is expected


def test_the_server_stores_exactly_the_audit_cases(ingest_trail: AuditTrail) -> None:
    request = log_request([log for log, _ in AUDIT_CASES])
    # the wire form of the cases decodes to what the cases say (empty AnyValue -> None)
    decoded = [otlp.attributes(entry.log.attributes)
               for entry in otlp.iter_log_entries(request)]
    assert decoded == [log.get("attributes", {}) for log, _ in AUDIT_CASES]
    batch = records_from_request(ingest_trail, request)
    expected = sum(1 for _, audit in AUDIT_CASES if audit)
    assert len(batch.records) == expected
    assert batch.rejected == len(AUDIT_CASES) - expected
    assert batch.unconverted == 0
    # and they are the right ones: log_request stamps case i at microsecond i
    assert sorted(record.timestamp.microsecond for record in batch.records) == [
        i for i, (_, audit) in enumerate(AUDIT_CASES) if audit]
