"""Shared by the OpenTelemetry processors: mapped attributes -> a submitted audit record."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from .._internal import log_internal_error
from ..record import AuditRecord
from ..trail import AuditTrail, get_trail

__all__ = ["build_from_fields", "ns_to_datetime", "resolve_trail", "submit_fields"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_UNKNOWN_SERVICE = "unknown_service"


def ns_to_datetime(ns: int | None) -> dt.datetime | None:
    """OpenTelemetry nanoseconds since the epoch -> an aware UTC ``datetime``."""
    if not ns:
        return None
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


def resolve_trail(trail: AuditTrail | None) -> AuditTrail:
    """The given trail, or the process default (looked up per call so ``configure()``
    after instrumenting still takes effect)."""
    return trail if trail is not None else get_trail()


def build_from_fields(
    trail: AuditTrail,
    fields: dict[str, Any],
    *,
    default_action: str,
    trace_id: int,
    span_id: int,
    timestamp_ns: int | None,
) -> AuditRecord:
    """Build one record from :func:`~otel_audit.mapping.attributes_to_fields` output."""
    action = fields.pop("action", None) or default_action
    service = fields.get("service_name")
    if isinstance(service, str) and service.startswith(_UNKNOWN_SERVICE):
        del fields["service_name"]  # the SDK's placeholder: the trail's own name is better
    return trail.build_record(
        str(action),
        trace_id=format(trace_id, "032x") if trace_id else None,
        span_id=format(span_id, "016x") if span_id else None,
        timestamp=ns_to_datetime(timestamp_ns),
        **fields,
    )


def submit_fields(
    trail: AuditTrail,
    fields: dict[str, Any],
    *,
    default_action: str,
    trace_id: int,
    span_id: int,
    timestamp_ns: int | None,
) -> AuditRecord | None:
    """Build and submit one record from :func:`~otel_audit.mapping.attributes_to_fields`
    output; never raises (a capture path must not break the instrumented code)."""
    if not trail.enabled:
        return None
    try:
        record = build_from_fields(trail, fields, default_action=default_action,
                                   trace_id=trace_id, span_id=span_id,
                                   timestamp_ns=timestamp_ns)
        trail.submit(record)
    except Exception:
        log_internal_error("otel_capture", logging.ERROR,
                           "could not record audit entry from OpenTelemetry data", exc_info=True)
        return None
    return record
