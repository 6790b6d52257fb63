"""The audit record, its enums, and the normalisation every record goes through.

:class:`AuditRecord` is an immutable, slotted value (a ``NamedTuple``: building one costs
about a microsecond, a frozen dataclass of the same width costs five). The caller's
thread builds it and takes its :func:`snapshot` (plain data copied, values that cannot
change shared, anything else converted there), so later changes to the caller's objects
never reach it; :func:`normalise` runs on the pipeline's worker and turns whatever the
caller passed into something every store accepts: JSON-safe, NUL-free, valid UTF-8, no
longer than its column, no larger than the record cap. Neither raises for any value
(a value whose own code raises becomes a safe string). Every change is written down in
``context["_normalised"]`` so nothing is altered silently. What a value becomes, and the
canonical JSON encoder, are in :mod:`otel_audit._jsonsafe`.

The record is split by job: its type and constants (:mod:`otel_audit.record_model`),
normalisation (:mod:`otel_audit.normalisation`), the snapshot
(:mod:`otel_audit.snapshot`); this module is the public face of the three.
"""

from __future__ import annotations

from ._jsonsafe import json_safe
from .normalisation import _compiled_plain_texts, normalise, plain_texts
from .record_model import (
    COLUMN_LIMITS,
    JSON_FIELDS,
    MAX_SCHEMA_VERSION,
    NORMALISATION_KEY,
    SCHEMA_VERSION,
    TEXT_FIELDS,
    AuditAction,
    AuditRecord,
    DataClassification,
)
from .snapshot import SNAPSHOT_ATOMS, snapshot

__all__ = [
    "COLUMN_LIMITS",
    "JSON_FIELDS",
    "MAX_SCHEMA_VERSION",
    "NORMALISATION_KEY",
    "SCHEMA_VERSION",
    "SNAPSHOT_ATOMS",
    "TEXT_FIELDS",
    "AuditAction",
    "AuditRecord",
    "DataClassification",
    "json_safe",
    "normalise",
    "plain_texts",
    "snapshot",
]

#: The compiled ``plain_texts`` in use (``None``: the pure-Python path); see _accel.
compiled_plain_texts = _compiled_plain_texts
