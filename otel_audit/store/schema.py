"""The one table definition of the trail (SQLAlchemy Core) and the row layout writers use.

Indexes are few on purpose: every index is paid for on every insert (the seed's table
carried 18 and its users measured the write amplification). Each one below names the
query it serves; the README lists them.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

from ..fields import (
    ADDED_FIELDS,
    FIELD_NAMES,
    FIELDS,
    JSON_FIELDS,
    LEGACY_PERSONAL_FIELDS,
    FieldSpec,
    column_limits,
)
from ..fields import PERSONAL_FIELDS as _PERSONAL_FIELDS

__all__ = [
    "CHAIN_COLUMNS",
    "HASHED_FIELDS",
    "LEGACY_HASHED_FIELDS",
    "LEGACY_PERSONAL_FIELDS",
    "PERSONAL_FIELDS",
    "RECORD_COLUMNS",
    "ROW_COLUMNS",
    "JSONText",
    "audit_checkpoints",
    "audit_duplicates",
    "audit_erasures",
    "audit_forward_cursors",
    "audit_forward_rejects",
    "audit_holds",
    "audit_seals",
    "audit_trails",
    "metadata",
]

metadata = MetaData()


class JSONText(TypeDecorator[Any]):
    """A JSON document kept as ``TEXT`` (SQLite): stored exactly as written, read as JSON.

    SQLite gives a column declared ``JSON`` NUMERIC affinity, which turns a bare number
    document (``12``, ``1.5``, ``1e+16``) into an INTEGER or REAL and changes its text;
    ``TEXT`` affinity keeps every document byte for byte, as the chain hashed it.
    Statements built with SQLAlchemy still bind and read Python values; SQLite's JSON
    functions and DuckDB read the text as JSON.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        """Serialise a Python value (compact, sorted keys, as the writer does)."""
        if value is None:
            return None
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                          allow_nan=False)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """Parse the stored text (a number left by a store from before 0004 as is)."""
        if value is None or not isinstance(value, str | bytes):
            return value
        return json.loads(value)


#: JSON columns: JSONB on PostgreSQL, TEXT on SQLite (see JSONText), JSON elsewhere.
_JSON = JSON().with_variant(JSONB(), "postgresql").with_variant(JSONText(), "sqlite")


#: Length of a record id (the other tables name records by it).
_ID_LENGTH = column_limits()["id"]

#: Column defaults of the record's NOT NULL flags and version (rows from before them).
_DEFAULTS: dict[str, Any] = {"requires_review": False, "success": True, "schema_version": 1}


def _column(spec: FieldSpec) -> Column[Any]:
    """The ``audit_trails`` column of one record field (otel_audit.fields)."""
    kind = spec.kind
    type_: Any
    if kind == "string":
        type_ = String(spec.limit)
    elif kind == "text":
        type_ = Text
    elif kind == "json":
        type_ = _JSON
    elif kind == "timestamp":
        type_ = DateTime(timezone=True)
    elif kind == "bool":
        type_ = Boolean
    else:
        type_ = Integer
    extra: dict[str, Any] = {}
    if spec.name in _DEFAULTS:
        extra["default"] = _DEFAULTS[spec.name]
    return Column(spec.name, type_, nullable=spec.nullable, primary_key=spec.name == "id",
                  **extra)


def _record_columns(added: bool) -> list[Column[Any]]:
    """The columns of the first layout's fields, or of the fields added later."""
    return [_column(spec) for spec in FIELDS if (spec.name in ADDED_FIELDS) is added]


audit_trails = Table(
    "audit_trails",
    metadata,
    *_record_columns(False),
    # integrity chain (see otel_audit.integrity): one chain per writer stream
    Column("stream", String(128)),
    Column("seq", BigInteger),
    Column("prev_hash", String(64)),
    Column("hash", String(64)),
    # personal-data digest inputs (see docs/integrity.md): erasure keeps the chain valid
    Column("pii_salt", String(32)),
    Column("pii", Text),
    # layout 3 (migration 0008 appended them, so a new store has the migrated order)
    *_record_columns(True),
    # HMAC-SHA256 of ``hash`` with the chain's key (otel-audit/3 rows of a keyed chain)
    Column("mac", String(64)),
    # time-range scans: exports, retention, reports bounded by date
    Index("ix_audit_trails_timestamp", "timestamp"),
    # history of one resource, newest first (get_audit_trail, resource_history)
    Index("ix_audit_trails_resource", "resource_type", "resource_id", "timestamp"),
    # what one actor did, newest first (get_audit_trail by user, who-did-what)
    Index("ix_audit_trails_user", "user_id", "timestamp"),
    # every record of one trace (trace timeline, span -> audit rows)
    Index("ix_audit_trails_trace", "trace_id"),
    # one action in a time range, newest first (the console's search by action; 0006)
    Index("ix_audit_trails_action", "action", "timestamp"),
    # records awaiting review, oldest first (the console's review queue; partial: only
    # records that require review pay for it on insert; 0006)
    Index("ix_audit_trails_review", "timestamp", "id",
          sqlite_where=text("requires_review = 1"), postgresql_where=text("requires_review")),
    # chain order per stream, and its uniqueness (verification, replay safety)
    Index("ux_audit_trails_stream_seq", "stream", "seq", unique=True),
)

#: Columns filled from an AuditRecord, in row order.
RECORD_COLUMNS: tuple[str, ...] = FIELD_NAMES

#: Columns filled by the integrity chain.
CHAIN_COLUMNS: tuple[str, ...] = ("stream", "seq", "prev_hash", "hash", "pii_salt", "pii",
                                  "mac")

#: Record fields holding personal data: rows of the newest layout (``otel-audit/3``) hash
#: them only through a salted digest.
PERSONAL_FIELDS: tuple[str, ...] = _PERSONAL_FIELDS

#: Record fields ``otel-audit/3`` hashes as they are stored, in payload order.
HASHED_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if not f.personal)

#: Record fields ``otel-audit/1`` and ``/2`` hash as stored, in payload order (the first
#: layout's fields but its personal ones: ``acting_as`` among them).
LEGACY_HASHED_FIELDS: tuple[str, ...] = tuple(
    f.name for f in FIELDS if f.since <= 2 and f.name not in LEGACY_PERSONAL_FIELDS)

#: The row layout the writer inserts and the chain hashes (``docs/integrity.md``): chain
#: position, the fields ``otel-audit/1`` and ``/2`` hash as stored, their personal fields,
#: salt, personal-key list and hash (the layout of rows sealed before layout 3), then the
#: fields added since and the ``mac``. Timestamps are UTC text with microseconds,
#: booleans 0/1, JSON documents text.
ROW_COLUMNS: tuple[str, ...] = ("stream", "seq", "prev_hash", *LEGACY_HASHED_FIELDS,
                                *LEGACY_PERSONAL_FIELDS, "pii_salt", "pii", "hash",
                                *ADDED_FIELDS, "mac")

#: Signed chain heads (one row per checkpoint of one stream).
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stream", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("signature", String(128)),
    Column("public_key", String(64)),
    # the latest checkpoint of each stream (verify, resume of a named stream)
    Index("ix_audit_checkpoints_stream_seq", "stream", "seq"),
)

#: Legal holds: records matching an active hold are never pruned.
audit_holds = Table(
    "audit_holds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("value", String(255), nullable=False),
    Column("resource_type", String(100)),
    Column("reason", Text),
    Column("created_by", String(255)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True)),
)

#: Seals: signed digests of chain heads, chained per sealer (``docs/integrity.md``).
audit_seals = Table(
    "audit_seals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sealer", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("heads", Text, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("signature", String(128)),
    Column("public_key", String(64)),
    # one chain of seals per sealer, and its order (verify, the sealer's resume)
    Index("ux_audit_seals_sealer_seq", "sealer", "seq", unique=True),
)

#: Erasures: the signed list of the rows one ``forget`` erased (``docs/integrity.md``).
audit_erasures = Table(
    "audit_erasures",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("document", Text, nullable=False),
    Column("signature", String(128)),
    Column("public_key", String(64)),
)

#: Chain positions sealed for a record whose ``id`` the store already held (the insert
#: kept the first): an idempotent duplicate, e.g. two writers sealing the same retried
#: record at once. ``verify`` reads each as the stored record at this position, with
#: the personal digest of the seal (``pii``, erased form: no personal value is kept).
audit_duplicates = Table(
    "audit_duplicates",
    metadata,
    Column("stream", String(128), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("id", String(_ID_LENGTH), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("pii", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # the seal's mac (otel-audit/3 with an HMAC key; migration 0008)
    Column("mac", String(64)),
)

#: Forwarding (``otel_audit.forward``, migration 0007): per destination and stream, the
#: last chain position the destination acknowledged. The row with ``stream = ''`` is the
#: destination's own: its lease (``holder``, ``lease_until``), last success and error.
audit_forward_cursors = Table(
    "audit_forward_cursors",
    metadata,
    Column("destination", String(128), primary_key=True),
    Column("stream", String(128), primary_key=True),
    Column("seq", BigInteger, nullable=False, default=0),
    Column("updated_at", DateTime(timezone=True)),
    # the first missing position after ``seq`` and when it was first seen missing
    Column("gap_seq", BigInteger),
    Column("gap_since", DateTime(timezone=True)),
    Column("holder", String(255)),
    Column("lease_until", DateTime(timezone=True)),
    Column("last_success", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("last_error_at", DateTime(timezone=True)),
)

#: Records a destination refused permanently (a 4xx other than 408/429): the cursor
#: moved past them; each is kept here with the reason.
audit_forward_rejects = Table(
    "audit_forward_rejects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("destination", String(128), nullable=False),
    Column("stream", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("record_id", String(_ID_LENGTH), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # the rejects of one destination, oldest first (forward --status, investigation)
    Index("ix_audit_forward_rejects_destination", "destination", "id"),
)

assert set(RECORD_COLUMNS) | set(CHAIN_COLUMNS) == set(audit_trails.c.keys())
assert sorted(ROW_COLUMNS) == sorted(audit_trails.c.keys())
assert set(JSON_FIELDS) <= set(RECORD_COLUMNS)
