"""The one mapping between OpenTelemetry attributes and audit record fields.

Used by every OpenTelemetry door (span processor, Logs SDK processor, OTLP ingest) and
in the other direction when audit records are emitted as OpenTelemetry log records.

=============================  ==============================================
attribute                      record field
=============================  ==============================================
``audit.action``               ``action``
``audit.resource.type``        ``resource_type``
``audit.resource.id``          ``resource_id``
``audit.resource.name``        ``resource_name``
``audit.team.id``              ``team_id``
``audit.data_classification``  ``data_classification``
``audit.requires_review``      ``requires_review``
``audit.success``              ``success``
``audit.error_message``        ``error_message``
``audit.old_values``           ``old_values`` (a map or a JSON string)
``audit.new_values``           ``new_values`` (a map or a JSON string)
``audit.changes``              ``changes`` (a map or a JSON string)
``audit.context``              ``context`` (a map or a JSON string)
``audit.acting_as``            ``acting_as``
``audit.record_id``            ``id`` (when re-ingesting a record emitted elsewhere)
``user.id`` / ``enduser.id``   ``user_id`` (``user.id`` wins)
``user.email``                 ``user_email``
``client.address``             ``client_ip``
``user_agent.original``        ``user_agent``
``http.request.method``        ``request_method``
``url.path`` / ``http.route``  ``request_path`` (``url.path`` wins)
``service.name`` (resource)    ``service_name``
=============================  ==============================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .record import AuditRecord

__all__ = [
    "AUDIT_EVENT_NAME",
    "FIELD_ATTRIBUTES",
    "attributes_to_fields",
    "is_audit",
    "record_to_attributes",
]

#: Event name (span events and log records) that marks an audit entry.
AUDIT_EVENT_NAME = "audit"

#: ``record field -> attribute names`` in order of preference.
FIELD_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "action": ("audit.action",),
    "resource_type": ("audit.resource.type",),
    "resource_id": ("audit.resource.id",),
    "resource_name": ("audit.resource.name",),
    "team_id": ("audit.team.id",),
    "data_classification": ("audit.data_classification",),
    "requires_review": ("audit.requires_review",),
    "success": ("audit.success",),
    "error_message": ("audit.error_message",),
    "old_values": ("audit.old_values",),
    "new_values": ("audit.new_values",),
    "changes": ("audit.changes",),
    "context": ("audit.context",),
    "acting_as": ("audit.acting_as",),
    "user_id": ("user.id", "enduser.id"),
    "user_email": ("user.email",),
    "client_ip": ("client.address",),
    "user_agent": ("user_agent.original",),
    "request_method": ("http.request.method",),
    "request_path": ("url.path", "http.route"),
}

#: ``attribute name -> (record field, preference rank)``, the inverse of the above.
_ATTRIBUTE_FIELDS: dict[str, tuple[str, int]] = {
    name: (field, rank)
    for field, names in FIELD_ATTRIBUTES.items()
    for rank, name in enumerate(names)
}

_JSON_FIELDS = frozenset({"old_values", "new_values", "changes", "context"})
_BOOL_FIELDS = frozenset({"requires_review", "success"})


def is_audit(attributes: Mapping[str, Any] | None, event_name: str | None = None) -> bool:
    """Whether a span, span event or log record is an audit entry."""
    return event_name == AUDIT_EVENT_NAME or bool(attributes and "audit.action" in attributes)


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        stripped = value.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                return json.loads(value)
            except ValueError:
                return value
    return value


def _as_bool(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"true", "1", "yes"}:
            return True
        if lowered in {"false", "0", "no"}:
            return False
    return value


def attributes_to_fields(
    attributes: Mapping[str, Any] | None,
    resource_attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return ``build_record`` keyword arguments found in ``attributes``.

    Maps and JSON strings are both accepted for the JSON fields; ``"true"``/``"false"``
    strings for the flags. Fields absent from the attributes are absent from the result.
    ``service_name`` comes from the resource's ``service.name``.
    """
    fields: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    # One pass over the attributes (span attributes are BoundedAttributes, whose ``in``
    # costs a Python-level call; the span processor runs on the caller's thread).
    lookup = _ATTRIBUTE_FIELDS.get
    for name, value in (attributes or {}).items():
        hit = lookup(name)
        if hit is None or value is None:
            continue
        field, rank = hit
        if ranks.get(field, rank) < rank:
            continue  # a preferred attribute of the same field was seen already
        ranks[field] = rank
        fields[field] = value
    for field in _JSON_FIELDS.intersection(fields):
        fields[field] = _as_json(fields[field])
    for field in _BOOL_FIELDS.intersection(fields):
        fields[field] = _as_bool(fields[field])
    if resource_attributes and resource_attributes.get("service.name") is not None:
        fields["service_name"] = str(resource_attributes["service.name"])
    return fields


def record_to_attributes(record: AuditRecord) -> dict[str, Any]:
    """Return OpenTelemetry attributes for ``record`` (JSON fields as JSON strings).

    The inverse of :func:`attributes_to_fields`; ``audit.record_id`` carries the ID.
    """
    attrs: dict[str, Any] = {"audit.record_id": record.id}
    for field, names in FIELD_ATTRIBUTES.items():
        value = getattr(record, field)
        if value is None:
            continue
        if field in _JSON_FIELDS:
            value = json.dumps(value, default=str, separators=(",", ":"))
        attrs[names[0]] = value
    return attrs
