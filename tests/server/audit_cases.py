"""The shared cases of "this OTLP log record is an audit entry".

One definition decides it: :func:`otel_audit.mapping.is_audit`. The ingest server
applies it (``tests/server/test_audit_cases.py`` runs every case through both), and the
Collector's routing condition in ``collector-config/`` must agree with it on every case
here, so a record the server would store is never routed to the ordinary log backend.

Each case is ``(log record, expected)``. A log record is a dict with any of:

* ``event_name``: the LogRecord's ``EventName`` field (OTTL ``event_name``);
* ``attributes``: attribute name -> value; ``None`` stands for an attribute whose
  ``AnyValue`` is empty (OTTL reads it as ``nil``);
* ``body``: the log record body (it never decides anything).

The rule: ``event_name == "audit"`` or ``attributes["event.name"] == "audit"`` or
``attributes["audit.action"] != nil`` -- names compared exactly, case-sensitive.
"""

from __future__ import annotations

from typing import Any

AuditCase = tuple[dict[str, Any], bool]

AUDIT_CASES: list[AuditCase] = [
    # the event name in the record's own field
    ({"event_name": "audit"}, True),
    ({"event_name": "audit", "attributes": {"user.id": "alice"}, "body": "EXPORT"}, True),
    # the event name as an attribute (older SDKs and bridges)
    ({"attributes": {"event.name": "audit"}}, True),
    ({"event_name": "login", "attributes": {"event.name": "audit"}}, True),
    # an audit.action attribute, whatever the event name
    ({"attributes": {"audit.action": "DELETE"}}, True),
    ({"event_name": "login", "attributes": {"audit.action": "LOGIN"}}, True),
    ({"attributes": {"audit.action": ""}}, True),  # an empty string is still a value
    ({"attributes": {"audit.action": 7}}, True),  # any type of value
    # not audit entries
    ({}, False),
    ({"body": "audit"}, False),  # the body never decides
    ({"body": "an ordinary log line", "attributes": {"user.id": "bob"}}, False),
    ({"attributes": {"audit.action": None}}, False),  # empty AnyValue: absent (nil)
    ({"event_name": "Audit"}, False),  # case-sensitive
    ({"event_name": "audit.login"}, False),
    ({"event_name": " audit"}, False),
    ({"attributes": {"event.name": "AUDIT"}}, False),
    ({"attributes": {"event.name": "login"}}, False),
    ({"attributes": {"event.name": None}}, False),
    ({"attributes": {"Audit.Action": "DELETE"}}, False),
    ({"attributes": {"audit": {"action": "DELETE"}}}, False),  # a map, not the attribute
    ({"attributes": {"audit.resource.type": "invoice", "audit.resource.id": "1"}}, False),
    ({"event_name": "login", "attributes": {"audit.action": None}}, False),
]
