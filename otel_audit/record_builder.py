"""Building a record on the caller's thread: a time-ordered ID, the time, the current
trace context (else the correlation ID), the request context, the policy's
classification and review flag, and the snapshot of the call's values
(:func:`otel_audit.record.snapshot`).

:class:`~otel_audit.trail.AuditTrail` runs :func:`build` as its ``_build`` method, with
every field positional: keyword matching would cost the caller of ``record()`` twice.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from typing import Any, Protocol, TypedDict

from uuid_utils import uuid7

from .context import _correlation_id, _request_context, current_trace_ids
from .policy import AuditPolicy
from .record import SCHEMA_VERSION, SNAPSHOT_ATOMS, AuditRecord, snapshot

__all__ = ["RecordFields", "TrailBuilding", "build", "storable_name"]

_UTC = dt.UTC
_AuditRecord = AuditRecord
_new_record = tuple.__new__
_now = dt.datetime.now
_current_trace_ids = current_trace_ids

_EnumType = enum.EnumType

_snapshot: Callable[[AuditRecord, frozenset[type], type, Callable[[AuditRecord], AuditRecord]],
                    AuditRecord]
try:  # compiled (optional): plain data copied in C, the rest handed to record.snapshot
    from ._accel import snapshot as _snapshot
except ImportError:  # pragma: no cover - depends on the build
    def _snapshot(record: AuditRecord, atoms: frozenset[type], enum_meta: type,
                  fallback: Callable[[AuditRecord], AuditRecord]) -> AuditRecord:
        return fallback(record)


def storable_name(name: str) -> str:
    """``name`` with NUL characters and lone surrogates as U+FFFD (stores refuse both)."""
    return "".join("\ufffd" if ch == "\x00" or "\ud800" <= ch <= "\udfff" else ch
                   for ch in name)


class RecordFields(TypedDict, total=False):
    """Keyword arguments of :meth:`AuditTrail.record` (every one optional)."""

    user_id: str | None
    resource_type: str | None
    resource_id: str | None
    resource_name: str | None
    user_email: str | None
    team_id: str | None
    client_ip: str | None
    user_agent: str | None
    request_path: str | None
    request_method: str | None
    request_id: str | None
    old_values: Any
    new_values: Any
    changes: Any
    data_classification: str | None
    requires_review: bool | None
    success: bool
    error_message: str | None
    context: Any
    acting_as: str | None
    auth_method: str | None
    delegation_chain: Any
    timestamp: dt.datetime | None


class TrailBuilding(Protocol):
    """What :func:`build` reads of its trail."""

    policy: AuditPolicy
    service_name: str


def build(
    trail: TrailBuilding,
    action: str,
    user_id: str | None,
    resource_type: str | None,
    resource_id: str | None,
    resource_name: str | None,
    user_email: str | None,
    team_id: str | None,
    client_ip: str | None,
    user_agent: str | None,
    request_path: str | None,
    request_method: str | None,
    request_id: str | None,
    old_values: Any,
    new_values: Any,
    changes: Any,
    data_classification: str | None,
    requires_review: bool | None,
    success: bool,
    error_message: str | None,
    context: Any,
    acting_as: str | None,
    timestamp: dt.datetime | None,
    trace_id: str | None,
    span_id: str | None,
    service_name: str | None,
    apply_policy: bool,
    auth_method: str | None = None,
    delegation_chain: Any = None,
) -> AuditRecord:
    """A record of ``trail`` (:meth:`~otel_audit.trail.AuditTrail.build_record`), every
    field positional (no keyword matching on the hot path: ``record()`` calls it directly)."""
    record_id = uuid7().hex
    if trace_id is None:
        current_trace, current_span = _current_trace_ids()
        if current_trace is not None:
            trace_id = correlation_id = current_trace
            span_id = current_span
        else:
            correlation_id = _correlation_id.get() or record_id
    else:
        correlation_id = trace_id
    req = _request_context.get()
    if req is not None:
        client_ip = client_ip if client_ip is not None else req.client_ip
        user_agent = user_agent if user_agent is not None else req.user_agent
        request_path = request_path if request_path is not None else req.request_path
        request_method = request_method if request_method is not None else req.request_method
        request_id = request_id if request_id is not None else req.request_id
        user_id = user_id if user_id is not None else req.user_id
        user_email = user_email if user_email is not None else req.user_email
        team_id = team_id if team_id is not None else req.team_id
        acting_as = acting_as if acting_as is not None else req.acting_as
        auth_method = auth_method if auth_method is not None else req.auth_method
        if delegation_chain is None:
            delegation_chain = req.delegation_chain
        if req.extra and (context is None or issubclass(type(context), dict)):
            try:
                merged = {**req.extra, **(context or {})}  # request notes, caller wins
            except Exception:  # a dict subclass whose keys() raises: kept as it is
                merged = context
            context = merged
    if apply_policy:
        policy = trail.policy
        try:
            if data_classification is None and requires_review is None:
                data_classification, requires_review = policy.decide(action, resource_type)
            else:
                if data_classification is None:
                    data_classification = policy.classify(resource_type)
                requires_review = policy.requires_review(
                    action, data_classification, resource_type, requires_review
                )
        except Exception:  # unhashable or odd values: the snapshot and normaliser note them
            pass
    if type(requires_review) is not bool:  # a non-bool is converted and noted
        requires_review = False if requires_review is None else requires_review
    # tuple.__new__ directly: the NamedTuple's generated __new__ is a Python-level
    # call with 30 defaults, measurable on the caller's hot path. Then the snapshot:
    # the record holds the values as they are now, not the caller's dicts (see
    # record.snapshot); it leaves the cycle collector when it holds only atoms, so
    # such queued records cost no collection anything (thousands may wait).
    return _snapshot(_new_record(_AuditRecord, (
        record_id,
        timestamp if timestamp is not None else _now(_UTC),
        action,
        user_id,
        correlation_id,
        trace_id,
        span_id,
        resource_type,
        resource_id,
        resource_name,
        user_email,
        team_id,
        client_ip,
        user_agent,
        request_path,
        request_method,
        request_id,
        old_values,
        new_values,
        changes,
        data_classification,
        requires_review,
        success,
        error_message,
        context,
        service_name if service_name is not None else trail.service_name,
        acting_as,
        SCHEMA_VERSION,
        auth_method,
        delegation_chain,
    )), SNAPSHOT_ATOMS, _EnumType, snapshot)
