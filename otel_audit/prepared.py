"""The record every stage passes along: :class:`PreparedRecord`, and its store row.

Capture makes :class:`~otel_audit.record.AuditRecord` values; the pipeline's worker
normalises each into a :class:`PreparedRecord` (the record, its JSON texts and, once
chained, its place in the hash chain). The spool, the journal, the quarantine, the
integrity sealers and every exporter take this type, so it lives here, on its own,
importing nothing but the record: no stage needs the store's writer to name it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .record import AuditRecord

__all__ = ["PreparedRecord", "chain_row", "store_row"]


class PreparedRecord(NamedTuple):
    """A normalised record with its JSON texts and (once chained) its chain position.

    ``row`` is the record as the store takes it
    (:data:`~otel_audit.store.schema.ROW_COLUMNS` order), kept by the chain sealer,
    which builds it to hash it anyway; :func:`store_row` builds it otherwise. It is
    derived data: the spool and the journal do not keep it.
    """

    record: AuditRecord
    texts: dict[str, str | None]
    stream: str | None = None
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None
    pii_salt: str | None = None
    pii: str | None = None
    #: HMAC-SHA256 of ``hash`` with the chain's key (rows of ``otel-audit/3`` sealed
    #: with a key; ``docs/integrity.md``)
    mac: str | None = None
    row: tuple[Any, ...] | None = None


# chain_row() unpacks records positionally: fail at import if the layout ever moves
assert AuditRecord._fields == (
    "id", "timestamp", "action", "user_id", "correlation_id", "trace_id", "span_id",
    "resource_type", "resource_id", "resource_name", "user_email", "team_id", "client_ip",
    "user_agent", "request_path", "request_method", "request_id", "old_values", "new_values",
    "changes", "data_classification", "requires_review", "success", "error_message",
    "context", "service_name", "acting_as", "schema_version", "auth_method",
    "delegation_chain",
)


def chain_row(
    record: AuditRecord,
    texts: dict[str, str | None],
    stream: str | None = None,
    seq: int | None = None,
    prev_hash: str | None = None,
    hash: str | None = None,
    pii_salt: str | None = None,
    pii: str | None = None,
    mac: str | None = None,
) -> tuple[Any, ...]:
    """The store row of a normalised record (``ROW_COLUMNS`` order).

    The timestamp is UTC text with microseconds, booleans are 0/1 and JSON documents
    their texts: the form the chain hashes and SQLite stores. (A record prepared by an
    older release has no text of the later layouts' JSON fields: ``None``.)
    """
    (rid, ts, action, user_id, correlation_id, trace_id, span_id, resource_type,
     resource_id, resource_name, user_email, team_id, client_ip, user_agent, request_path,
     request_method, request_id, _old, _new, _changes, data_classification,
     requires_review, success, error_message, _context, service_name, acting_as,
     schema_version, auth_method, _delegation) = record
    return (
        stream, seq, prev_hash, rid, ts.isoformat(" ", "microseconds")[:26], correlation_id,
        request_id, trace_id, span_id, action, resource_type, resource_id, resource_name,
        team_id, request_path, request_method, texts["old_values"], texts["new_values"],
        texts["changes"], data_classification, 1 if requires_review else 0,
        1 if success else 0, error_message, texts["context"], service_name, acting_as,
        schema_version, user_id, user_email, client_ip, user_agent, pii_salt, pii, hash,
        auth_method, texts.get("delegation_chain"), mac,
    )


def store_row(prepared: PreparedRecord) -> tuple[Any, ...]:
    """``prepared.row``, or the same row built from the record."""
    row = prepared.row
    if row is None:
        row = chain_row(*prepared[:9])
    return row
