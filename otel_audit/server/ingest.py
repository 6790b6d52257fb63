"""From OTLP log records to audit records, and handing them to the trail.

A log record is an audit entry when :func:`otel_audit.mapping.is_audit` says so (event
name ``audit`` in the record or its ``event.name`` attribute, or an ``audit.action``
attribute) -- the same rule as the Collector's routing condition. Its trace and span
IDs come from the log record, ``service.name`` from its resource, everything else
through the shared attribute mapping. Other log records are counted and reported back through
``partial_success``. An audit log record the mapping cannot turn into a record (a bug,
or a value nothing expected) is still stored: as a record holding the OTLP log record
itself under ``context["otlp_log_record"]``, with a ``conversion_failed`` note.

Each record is delivered in the stricter of the request's acknowledgement mode (the
floor) and its own rule (the trail's ``mode_by_action`` > ``mode_by_classification``,
:class:`~otel_audit.pipeline.delivery.ModeChooser`): a request holding a record ruled
``sync`` is acknowledged only once that record is committed (see :func:`deliver`).

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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from .._internal import log_internal_error
from ..mapping import AUDIT_EVENT_NAME, attributes_to_fields, is_audit
from ..pipeline.delivery import ModeChooser
from ..record import NORMALISATION_KEY, AuditRecord
from ..trail import AuditTrail
from . import otlp
from .otlp import LogEntry, hex_id, trace_ids

__all__ = ["RECORD_ID_ATTRIBUTE", "IngestBatch", "deliver", "records_from_request",
           "split_by_mode"]

#: Attribute carrying the ID of a record emitted by another trail (re-ingest).
RECORD_ID_ATTRIBUTE = "audit.record_id"

_MAX_ID_CHARS = 36
_MS_MASK = (1 << 48) - 1


class IngestBatch(NamedTuple):
    """Audit records found in one request and the count of log records left out."""

    records: list[AuditRecord]
    rejected: int
    message: str
    #: audit log records stored as received because the mapping failed on them
    unconverted: int = 0


def stable_record_id(time_ns: int, digest: bytes) -> str:
    """Return a UUIDv7-layout ID (32 hex digits) from a timestamp and a content digest."""
    rand = int.from_bytes(digest[:10], "big")  # 80 bits, of which 74 are used
    value = ((time_ns // 1_000_000) & _MS_MASK) << 80
    value |= 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    return format(value, "032x")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# the record's ID is its first field (tests/server/test_ingest.py checks it); the
# correlation ID's position is looked up once
_CORRELATION = AuditRecord._fields.index("correlation_id")
_make_record = AuditRecord._make
# the record's tuple made directly (``_make`` is a Python-level call per record)
_new_record = tuple.__new__
_hex_id = hex_id


_timedelta = dt.timedelta


def _timestamp(time_ns: int) -> dt.datetime:
    # positional (days, seconds, microseconds): no keyword matching per record
    return _EPOCH + _timedelta(0, 0, time_ns // 1000)


class _Entries:
    """The parsed request's log records, looked up by position only when needed (the
    content digest of a record without its own ID, a record the mapping failed on)."""

    def __init__(self, request: ExportLogsServiceRequest) -> None:
        self.request = request

    def entry(self, values: otlp.LogFields) -> LogEntry:
        return otlp.log_entry(self.request, values[1], values[0])

    def digest(self, values: otlp.LogFields) -> bytes:
        return self.entry(values).digest


def _to_record(trail: AuditTrail, values: otlp.LogFields, entries: _Entries) -> AuditRecord:
    """The audit record of an audit log record (``values``: :func:`otlp.log_fields`).

    The trace IDs and the timestamp are read once from the log record; the stable ID
    (and, without a trace, the correlation ID) replace the ones ``build_record`` made
    (:func:`_with_stable_id`, written out here: this runs for every record received).
    """
    resource, _, attrs, _, body, time_ns, observed_ns, trace, span = values
    fields = attributes_to_fields(attrs, resource)
    action = fields.pop("action", None)
    if action is None:
        # an ``audit`` event without audit.action: the body names the action, if a string
        action = body if isinstance(body, str) and body else AUDIT_EVENT_NAME
    trace_id, span_id = _hex_id(trace), _hex_id(span)
    time_ns = time_ns or observed_ns
    record = trail.build_record(str(action), trace_id=trace_id, span_id=span_id,
                                timestamp=_timestamp(time_ns) if time_ns else None, **fields)
    given_id = attrs.get(RECORD_ID_ATTRIBUTE)
    if isinstance(given_id, str) and 0 < len(given_id) <= _MAX_ID_CHARS:
        record_id = given_id
    else:  # the digest (a serialization and a hash) only when it is used
        record_id = stable_record_id(time_ns, entries.digest(values))
    if trace_id is None:  # build_record made up a correlation ID; keep it stable too
        return _new_record(AuditRecord, (record_id, *record[1:_CORRELATION], record_id,
                                         *record[_CORRELATION + 1:]))
    return _new_record(AuditRecord, (record_id, *record[1:]))


def _log_fields(log: LogRecord) -> dict[str, Any]:
    """Trace context and time of ``log`` as ``build_record`` keyword arguments."""
    trace_id, span_id = trace_ids(log)
    time_ns = log.time_unix_nano or log.observed_time_unix_nano
    return {"trace_id": trace_id, "span_id": span_id,
            "timestamp": _timestamp(time_ns) if time_ns else None}


def _with_stable_id(record: AuditRecord, attrs: dict[str, Any], digest: Callable[[], bytes],
                    time_ns: int, no_trace: bool) -> AuditRecord:
    given_id = attrs.get(RECORD_ID_ATTRIBUTE)
    if isinstance(given_id, str) and 0 < len(given_id) <= _MAX_ID_CHARS:
        record_id = given_id
    else:  # the digest (a serialization and a hash) only when it is used
        record_id = stable_record_id(time_ns, digest())
    # slices rather than ``_replace`` (a Python-level call per field, paid per record)
    if no_trace:  # build_record made up a correlation ID; keep it stable too
        return _make_record((record_id, *record[1:_CORRELATION], record_id,
                             *record[_CORRELATION + 1:]))
    return _make_record((record_id, *record[1:]))


def _unconverted_record(trail: AuditTrail, entry: LogEntry, attrs: dict[str, Any],
                        error: Exception) -> AuditRecord:
    """The record kept for an audit log record the mapping failed on: the log record as
    OTLP/JSON under ``context["otlp_log_record"]``, and a note saying why."""
    action = attrs.get("audit.action")
    context = {
        "otlp_log_record": json_format.MessageToDict(entry.log),
        NORMALISATION_KEY: [{"field": "record", "kind": "conversion_failed",
                             "error": f"{type(error).__name__}: {error}"[:500]}],
    }
    record = trail.build_record(action if isinstance(action, str) and action
                                else AUDIT_EVENT_NAME,
                                context=context, apply_policy=False, **_log_fields(entry.log))
    log = entry.log
    return _with_stable_id(record, attrs, lambda: entry.digest,
                           log.time_unix_nano or log.observed_time_unix_nano,
                           trace_ids(log)[0] is None)


def records_from_request(trail: AuditTrail, request: ExportLogsServiceRequest,
                         payload: bytes | None = None) -> IngestBatch:
    """Turn the audit log records of ``request`` into audit records (nothing is written).

    ``payload``: the protobuf bytes ``request`` was parsed from, read again by the
    compiled decoder when it is built (:func:`otlp.log_fields`: the same values, faster).
    Log records that are not audit entries are counted in ``rejected`` and explained in
    ``message``; audit log records the mapping failed on are kept as received (see the
    module docstring), counted in ``unconverted`` and mentioned in ``message``.
    """
    records: dict[str, AuditRecord] = {}
    not_audit = converted_raw = 0
    entries = _Entries(request)
    for values in otlp.log_fields(request, payload):
        attrs = values[2]
        # is_audit's first test written out (every record a forwarder sends passes it)
        if values[3] != AUDIT_EVENT_NAME and not is_audit(attrs, values[3] or None):
            not_audit += 1
            continue
        try:
            record = _to_record(trail, values, entries)
        except Exception as exc:  # one odd record must neither sink the batch nor be lost
            log_internal_error("ingest_record", logging.ERROR,
                               "could not convert an OTLP audit log record; storing it "
                               "as received with a conversion_failed note", exc_info=True)
            # if even this fails, the request answers 503 and the sender keeps the batch
            record = _unconverted_record(trail, entries.entry(values), attrs, exc)
            converted_raw += 1
        # identical bytes in one request are one record (its ID is the same)
        records.setdefault(record[0], record)  # the ID
    parts = []
    if not_audit:
        parts.append(f"{not_audit} log record(s) were not audit entries (event name "
                     f"{AUDIT_EVENT_NAME!r} or attribute 'audit.action') and were not stored")
    if converted_raw:
        parts.append(f"{converted_raw} audit log record(s) could not be mapped and were "
                     f"stored as received (note 'conversion_failed')")
    return IngestBatch(list(records.values()), not_audit, "; ".join(parts), converted_raw)


def split_by_mode(records: Sequence[AuditRecord], floor: str, rules: ModeChooser | None
                  ) -> tuple[list[AuditRecord], list[AuditRecord]]:
    """Return ``(sync, durable)``: each record in the stricter of ``floor`` and its rule.

    ``rules`` resolves a record's rule (``mode_by_action`` > ``mode_by_classification``)
    and answers ``floor`` for a record without one; a rule laxer than the floor (``async``,
    or ``durable`` under a ``sync`` floor) never lowers it.
    """
    if floor == "sync":
        return list(records), []
    if floor != "durable":
        raise ValueError(f"{floor!r} does not make records durable before acknowledging")
    if rules is None or not rules.has_rules:
        return [], list(records)
    sync: list[AuditRecord] = []
    durable: list[AuditRecord] = []
    for record in records:
        (sync if rules(record, None) == "sync" else durable).append(record)
    return sync, durable


def deliver(trail: AuditTrail, records: Sequence[AuditRecord], mode: str,
            rules: ModeChooser | None = None) -> int:
    """Put ``records`` in the trail's durable path; raises if it cannot.

    ``mode`` is the floor (the request's acknowledgement mode); ``rules`` raise a record
    to ``sync`` (:func:`split_by_mode`). The ``sync`` records are committed first, in one
    store transaction, then the rest is journalled with one ``fsync``: when the commit
    fails nothing of the request has been taken, and the sender's retry of the whole
    request (same record IDs) is stored once. An acknowledgement therefore covers every
    record of the request in its own mode. Raises
    :class:`~otel_audit.errors.AuditWriteError` when the records are not safe; returns
    how many were committed before returning.
    """
    if not records:
        return 0
    sync, durable = split_by_mode(records, mode, rules)
    if sync:
        trail.pipeline.write_now(sync)
    if durable:
        trail.pipeline.submit_durable_batch(durable)
    return len(sync)
