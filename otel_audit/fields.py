"""The one definition of an audit record's fields.

Every place that lists the record's fields derives from :data:`FIELDS` or is held equal
to it by ``tests/test_fields.py``: the store's columns and the chain's hashed and
personal fields (:mod:`otel_audit.store.schema`), the length caps and JSON fields of the
normalisation (:mod:`otel_audit.record`), the OpenTelemetry attribute names
(:mod:`otel_audit.mapping`), the keys a caller may pass (``RecordFields``,
``ActionScope``, the logging handler's ``extra={"audit": ...}``, the seed-compatible
``log_action``). Adding a field is one line here (plus a migration, and the static
``AuditRecord``/``RecordFields`` declarations the type checker needs, which the test
compares with this list).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = [
    "ADDED_FIELDS",
    "CALLER_FIELDS",
    "FIELDS",
    "FIELD_NAMES",
    "JSON_FIELDS",
    "LEGACY_PERSONAL_FIELDS",
    "PERSONAL_FIELDS",
    "TEXT_FIELDS",
    "FieldSpec",
    "column_limits",
    "field_attributes",
]

#: How a field is stored: a bounded string, unbounded text, a JSON document, a
#: timestamp with time zone, a boolean, an integer.
Kind = Literal["string", "text", "json", "timestamp", "bool", "int"]


class FieldSpec(NamedTuple):
    """One field of an audit record: how it is stored, hashed, mapped and passed."""

    #: field, column and keyword name
    name: str
    #: how it is stored (see :data:`Kind`)
    kind: Kind
    #: longest value in characters (``kind == "string"`` only)
    limit: int | None = None
    #: whether the column takes NULL
    nullable: bool = True
    #: personal data: hashed only through the salted digest, erasable (docs/integrity.md)
    personal: bool = False
    #: whether callers pass it (``record()``'s keywords, ``ActionScope``, logging extra);
    #: the others are filled by the trail (ids, trace context, service, version)
    caller: bool = True
    #: OpenTelemetry attribute names, in order of preference (first: the one written)
    attributes: tuple[str, ...] = ()
    #: the record layout (``schema_version``) that added the field: its column follows
    #: the integrity columns (a migration appends it), and rows of older layouts are
    #: hashed without it
    since: int = 1
    #: the first ``schema_version`` whose hash covers the field only through the personal
    #: digest (``personal`` fields): before it, the field was hashed as stored
    personal_since: int = 1


#: Every field, in record order (``AuditRecord``'s). The store's columns follow it, except
#: that the fields of a later layout (``since``) come after the integrity columns, where
#: their migration appended them.
FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("id", "string", 36, nullable=False, caller=False),
    FieldSpec("timestamp", "timestamp", nullable=False, caller=False),
    FieldSpec("correlation_id", "string", 64, caller=False),
    FieldSpec("request_id", "string", 64, attributes=("audit.request_id",)),
    FieldSpec("trace_id", "string", 32, caller=False),
    FieldSpec("span_id", "string", 16, caller=False),
    FieldSpec("action", "string", 100, nullable=False, caller=False,
              attributes=("audit.action",)),
    FieldSpec("resource_type", "string", 100, attributes=("audit.resource.type",)),
    FieldSpec("resource_id", "string", 255, attributes=("audit.resource.id",)),
    FieldSpec("resource_name", "string", 500, attributes=("audit.resource.name",)),
    FieldSpec("user_id", "string", 255, nullable=False, personal=True,
              attributes=("user.id", "enduser.id")),
    FieldSpec("user_email", "string", 255, personal=True, attributes=("user.email",)),
    FieldSpec("team_id", "string", 36, attributes=("audit.team.id",)),
    FieldSpec("client_ip", "string", 45, personal=True, attributes=("client.address",)),
    FieldSpec("user_agent", "text", personal=True, attributes=("user_agent.original",)),
    FieldSpec("request_path", "string", 500, attributes=("url.path", "http.route")),
    FieldSpec("request_method", "string", 10, attributes=("http.request.method",)),
    FieldSpec("old_values", "json", attributes=("audit.old_values",)),
    FieldSpec("new_values", "json", attributes=("audit.new_values",)),
    FieldSpec("changes", "json", attributes=("audit.changes",)),
    FieldSpec("data_classification", "string", 50,
              attributes=("audit.data_classification",)),
    FieldSpec("requires_review", "bool", nullable=False,
              attributes=("audit.requires_review",)),
    FieldSpec("success", "bool", nullable=False, attributes=("audit.success",)),
    FieldSpec("error_message", "text", attributes=("audit.error_message",)),
    FieldSpec("context", "json", attributes=("audit.context",)),
    FieldSpec("service_name", "string", 255, caller=False),
    FieldSpec("acting_as", "string", 255, personal=True, personal_since=3,
              attributes=("audit.acting_as",)),
    FieldSpec("schema_version", "int", nullable=False, caller=False),
    # layout 3 (migration 0008): how the caller authenticated, and the principals a
    # token was delegated through (OAuth token exchange, service accounts acting for
    # users), a JSON list of {"principal": ..., "via": ...}
    FieldSpec("auth_method", "string", 100, since=3, attributes=("audit.auth.method",)),
    FieldSpec("delegation_chain", "json", personal=True, since=3,
              attributes=("audit.delegation_chain",)),
)

#: Field names in column order.
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)

#: Fields a caller passes (keyword names of ``record()`` besides ``action``/``timestamp``).
CALLER_FIELDS: frozenset[str] = frozenset(f.name for f in FIELDS if f.caller)

#: Columns holding JSON documents, in column order.
JSON_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.kind == "json")

#: Unbounded text columns (only the record cap applies).
TEXT_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.kind == "text")

#: Fields holding personal data, in column order (hashed through the salted digest by
#: rows of the newest layout; see :data:`LEGACY_PERSONAL_FIELDS` for older rows).
PERSONAL_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.personal)

#: Personal fields hashed through the digest by rows of ``schema_version`` 1 and 2
#: (``acting_as`` was hashed as stored until layout 3).
LEGACY_PERSONAL_FIELDS: tuple[str, ...] = tuple(
    f.name for f in FIELDS if f.personal and f.personal_since <= 2 and f.since <= 2)

#: Fields added by layout 3 (after the integrity columns in the store).
ADDED_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.since > 2)


def column_limits() -> dict[str, int]:
    """``field -> longest value in characters`` of every bounded string field."""
    return {f.name: f.limit for f in FIELDS if f.limit is not None}


def field_attributes() -> dict[str, tuple[str, ...]]:
    """``field -> OpenTelemetry attribute names`` (in order of preference)."""
    return {f.name: f.attributes for f in FIELDS if f.attributes}
