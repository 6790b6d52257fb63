"""From OTLP log records to audit records, and handing them to the trail.

A log record is an audit entry when :func:`otel_audit.mapping.is_audit` says so (event
name ``audit`` or an ``audit.action`` attribute). Its trace and span IDs come from the
log record, ``service.name`` from its resource, everything else through the shared
attribute mapping. Other log records are counted and reported back through
``partial_success``.

Record IDs are stable across retries: an ``audit.record_id`` attribute (set when a
trail re-emits its own records) is used as is; otherwise the ID is a UUIDv7-shaped value
made of the record's millisecond timestamp and a SHA-256 of the record, its scope and
its resource. A batch that a Collector or exporter sends again after a lost response
therefore lands on the same primary keys, and the store's idempotent insert keeps one
copy.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import NamedTuple

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from .._internal import log_internal_error
from ..mapping import AUDIT_EVENT_NAME, attributes_to_fields, is_audit
from ..record import AuditRecord
from ..trail import AuditTrail
from .otlp import LogEntry, any_value, attributes, iter_log_entries, trace_ids

__all__ = ["RECORD_ID_ATTRIBUTE", "IngestBatch", "deliver", "records_from_request"]

#: Attribute carrying the ID of a record emitted by another trail (re-ingest).
RECORD_ID_ATTRIBUTE = "audit.record_id"

_MAX_ID_CHARS = 36
_MS_MASK = (1 << 48) - 1


class IngestBatch(NamedTuple):
    """Audit records found in one request and the count of log records left out."""

    records: list[AuditRecord]
    rejected: int
    message: str


def stable_record_id(time_ns: int, digest: bytes) -> str:
    """Return a UUIDv7-layout ID (32 hex digits) from a timestamp and a content digest."""
    rand = int.from_bytes(digest[:10], "big")  # 80 bits, of which 74 are used
    value = ((time_ns // 1_000_000) & _MS_MASK) << 80
    value |= 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    return format(value, "032x")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _timestamp(time_ns: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=time_ns // 1000)


def _to_record(trail: AuditTrail, entry: LogEntry) -> AuditRecord | None:
    log = entry.log
    attrs = attributes(log.attributes)
    event_name = log.event_name or attrs.get("event.name")
    if not is_audit(attrs, event_name if isinstance(event_name, str) else None):
        return None
    fields = attributes_to_fields(attrs, entry.resource)
    action = fields.pop("action", None)
    if action is None:
        # an ``audit`` event without audit.action: the body names the action, if a string
        body = any_value(log.body)
        action = body if isinstance(body, str) and body else AUDIT_EVENT_NAME
    trace_id, span_id = trace_ids(log)
    time_ns = log.time_unix_nano or log.observed_time_unix_nano
    record = trail.build_record(
        str(action),
        trace_id=trace_id,
        span_id=span_id,
        timestamp=_timestamp(time_ns) if time_ns else None,
        **fields,
    )
    given_id = attrs.get(RECORD_ID_ATTRIBUTE)
    if isinstance(given_id, str) and 0 < len(given_id) <= _MAX_ID_CHARS:
        record_id = given_id
    else:
        record_id = stable_record_id(time_ns, entry.digest)
    if trace_id is None:  # build_record made up a correlation ID; keep it stable too
        return record._replace(id=record_id, correlation_id=record_id)
    return record._replace(id=record_id)


def records_from_request(trail: AuditTrail, request: ExportLogsServiceRequest) -> IngestBatch:
    """Turn the audit log records of ``request`` into audit records (nothing is written).

    Log records that are not audit entries, or that cannot be turned into records, are
    counted in ``rejected`` and explained in ``message``.
    """
    records: dict[str, AuditRecord] = {}
    not_audit = invalid = 0
    for entry in iter_log_entries(request):
        try:
            record = _to_record(trail, entry)
        except Exception:  # one odd record must not sink the batch
            log_internal_error("ingest_record", logging.WARNING,
                               "could not convert an OTLP log record", exc_info=True)
            invalid += 1
            continue
        if record is None:
            not_audit += 1
        else:
            # identical bytes in one request are one record (its ID is the same)
            records.setdefault(record.id, record)
    parts = []
    if not_audit:
        parts.append(f"{not_audit} log record(s) were not audit entries (event name "
                     f"{AUDIT_EVENT_NAME!r} or attribute 'audit.action') and were not stored")
    if invalid:
        parts.append(f"{invalid} audit log record(s) could not be converted")
    return IngestBatch(list(records.values()), not_audit + invalid, "; ".join(parts))


def deliver(trail: AuditTrail, records: Sequence[AuditRecord], mode: str) -> None:
    """Put ``records`` in the trail's durable path in ``mode``; raises if it cannot.

    One request, one unit: ``durable`` journals the whole request with one ``fsync``,
    ``sync`` commits it in one store transaction, so an acknowledgement covers every
    record of it. Raises :class:`~otel_audit.errors.AuditWriteError` when the records
    are not safe.
    """
    if not records:
        return
    if mode == "durable":
        trail.pipeline.submit_durable_batch(records)
    elif mode == "sync":
        trail.pipeline.write_now(records)
    else:
        raise ValueError(f"{mode!r} does not make records durable before acknowledging")
