"""Correlation and request context, carried in ``contextvars`` so threads and tasks agree.

The correlation ID of a record is, in order of preference:

1. the W3C trace ID of the current span, whenever its span context is valid (sampled
   or not): the trace ID *is* the correlation ID, so audit rows join to traces;
2. the value set by :func:`correlation_scope` (for example an inbound
   ``X-Correlation-ID`` header when no trace is active);
3. a newly generated ID (the record's own ID).

Reading the correlation ID never mutates context (the seed's getter set it as a side
effect).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

__all__ = [
    "CORRELATION_ID_PATTERN",
    "RequestContext",
    "correlation_scope",
    "current_correlation_id",
    "current_request_context",
    "current_trace_ids",
    "is_valid_correlation_id",
    "request_scope",
]

#: What an externally supplied correlation ID may look like (at most 64 characters).
CORRELATION_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")

_correlation_id: ContextVar[str | None] = ContextVar("otel_audit_correlation_id", default=None)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Request facts that audit calls inside the request pick up when not given."""

    client_ip: str | None = None
    user_agent: str | None = None
    request_path: str | None = None
    request_method: str | None = None
    request_id: str | None = None
    user_id: str | None = None
    user_email: str | None = None
    team_id: str | None = None
    acting_as: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: how the caller authenticated (``"oauth"``, ``"api_key"``, ``"mtls"``, ...)
    auth_method: str | None = None
    #: the principals the caller's authority was delegated through, in order:
    #: ``[{"principal": ..., "via": ...}, ...]``
    delegation_chain: list[dict[str, Any]] | None = None


_request_context: ContextVar[RequestContext | None] = ContextVar(
    "otel_audit_request_context", default=None
)


def is_valid_correlation_id(value: object) -> bool:
    """Return whether ``value`` is an acceptable external correlation ID."""
    return isinstance(value, str) and CORRELATION_ID_PATTERN.fullmatch(value) is not None


@contextmanager
def correlation_scope(value: str) -> Iterator[str]:
    """Use ``value`` as the correlation ID of records made inside the block.

    It applies only when no valid span context is current (a trace ID wins). A value
    that is not 1-64 characters of ``[A-Za-z0-9._-]`` raises :class:`ValueError`; the
    request middleware validates and replaces such values instead.
    """
    if not is_valid_correlation_id(value):
        raise ValueError(
            "correlation ID must be 1-64 characters of [A-Za-z0-9._-], "
            f"got {value[:80]!r}" if isinstance(value, str) else f"got {type(value).__name__}"
        )
    token = _correlation_id.set(value)
    try:
        yield value
    finally:
        _correlation_id.reset(token)


_get_current_context = otel_context.get_current
_get_current_span = trace.get_current_span
_NO_IDS: tuple[str | None, str | None] = (None, None)
# The last OpenTelemetry context read and its span's IDs. A Context is immutable (setting
# a value makes a new one) and a span's context never changes, so the same Context
# object always yields the same IDs: every record made in one span (or outside any)
# reads them once. The entry holds its Context, so that object's identity cannot be
# reused while it is compared; threads replace the entry in one assignment.
_last_ids: tuple[object, tuple[str | None, str | None]] = (object(), _NO_IDS)


def current_trace_ids() -> tuple[str | None, str | None]:
    """Return ``(trace_id, span_id)`` of the current span as lowercase hex, or ``None``s."""
    global _last_ids
    current = _get_current_context()
    last = _last_ids
    if last[0] is current:
        return last[1]
    ctx = _get_current_span(current).get_span_context()
    ids = (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")) if ctx.is_valid \
        else _NO_IDS
    _last_ids = (current, ids)
    return ids


def current_correlation_id() -> str | None:
    """Return the correlation ID in effect, without generating or storing one."""
    trace_id, _ = current_trace_ids()
    return trace_id if trace_id is not None else _correlation_id.get()


def scoped_correlation_id() -> str | None:
    """Return the value set by :func:`correlation_scope`, if any (no trace lookup)."""
    return _correlation_id.get()


@contextmanager
def request_scope(ctx: RequestContext) -> Iterator[RequestContext]:
    """Make ``ctx`` the request context of records made inside the block."""
    token = _request_context.set(ctx)
    try:
        yield ctx
    finally:
        _request_context.reset(token)


def current_request_context() -> RequestContext | None:
    """Return the request context set by middleware or :func:`request_scope`."""
    return _request_context.get()
