"""The audit record's type, its enums and constants, and the field positions every
record module shares (:mod:`otel_audit.record` is the public face of all of them).

The fields themselves are defined once, in :mod:`otel_audit.fields`; ``AuditRecord``
declares them statically for the type checker (``tests/test_fields.py`` holds the two
equal).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, NamedTuple

from .fields import JSON_FIELDS, TEXT_FIELDS, column_limits

__all__ = [
    "COLUMN_LIMITS",
    "JSON_FIELDS",
    "MAX_SCHEMA_VERSION",
    "NORMALISATION_KEY",
    "SCHEMA_VERSION",
    "TEXT_FIELDS",
    "AuditAction",
    "AuditRecord",
    "DataClassification",
]

#: Version of the record layout written by this release (stored with every row). 3: the
#: fields ``auth_method`` and ``delegation_chain``, and the row hashed under
#: ``otel-audit/3`` (a public SHA-256 chain, the HMAC apart in ``mac``; ``acting_as`` and
#: ``delegation_chain`` through the personal digest); rows of versions 1 and 2 keep
#: verifying under ``otel-audit/1`` and ``otel-audit/2`` (``docs/integrity.md``).
SCHEMA_VERSION = 3

#: Key under ``context`` where normalisations of a record are listed.
NORMALISATION_KEY = "_normalised"

#: Maximum length, in characters, of each bounded string column (otel_audit.fields).
COLUMN_LIMITS: dict[str, int] = column_limits()

_PREVIEW_CHARS = 1024
_NO_LIMIT = 1 << 62  # the text columns' length bound (none)


class AuditAction(str, enum.Enum):
    """Audit trail action types (the seed's vocabulary; any string is accepted)."""

    CREATE = "CREATE"
    READ = "READ"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    EXECUTE = "EXECUTE"
    ACCESS = "ACCESS"
    EXPORT = "EXPORT"
    IMPORT = "IMPORT"


class DataClassification(str, enum.Enum):
    """Data classification levels."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"


class AuditRecord(NamedTuple):
    """One audit entry: who did what to which resource, when, from where, with what outcome.

    ``id`` is a time-ordered UUIDv7 (32 hex characters) and the idempotency key of the
    store. ``trace_id``/``span_id`` are the W3C IDs of the span current when the action
    happened; when a trace was active ``correlation_id == trace_id``.
    """

    id: str
    timestamp: dt.datetime
    action: str
    user_id: str
    correlation_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    resource_name: str | None = None
    user_email: str | None = None
    team_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_path: str | None = None
    request_method: str | None = None
    request_id: str | None = None
    old_values: Any = None
    new_values: Any = None
    changes: Any = None
    data_classification: str | None = None
    requires_review: bool = False
    success: bool = True
    error_message: str | None = None
    context: Any = None
    service_name: str | None = None
    acting_as: str | None = None
    schema_version: int = SCHEMA_VERSION
    auth_method: str | None = None
    delegation_chain: Any = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a plain ``dict`` (field name to value)."""
        return self._asdict()


_FIELD_POS = {name: i for i, name in enumerate(AuditRecord._fields)}
_BOUNDED = tuple((_FIELD_POS[name], limit) for name, limit in COLUMN_LIMITS.items())
_TEXT_POS = tuple(_FIELD_POS[name] for name in TEXT_FIELDS)
_JSON_POS = tuple((name, _FIELD_POS[name]) for name in JSON_FIELDS)
_ACTION, _USER_ID, _TIMESTAMP = _FIELD_POS["action"], _FIELD_POS["user_id"], _FIELD_POS["timestamp"]
_REVIEW, _SUCCESS = _FIELD_POS["requires_review"], _FIELD_POS["success"]
_ID, _SCHEMA = _FIELD_POS["id"], _FIELD_POS["schema_version"]
#: The largest schema_version the store's INTEGER column holds.
MAX_SCHEMA_VERSION = 2**31 - 1


