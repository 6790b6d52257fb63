"""What the ASGI and WSGI middleware share: correlation-ID validation and the context."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uuid_utils import uuid7

from .._internal import log_internal_error
from ..context import RequestContext, is_valid_correlation_id

__all__ = ["DEFAULT_HEADER", "REPLACED_NOTE_KEY", "UserResolver", "correlation_for",
           "request_context"]

#: Default name of the inbound/outbound correlation header.
DEFAULT_HEADER = "X-Correlation-ID"
#: ``context`` key of records made in a request whose correlation header was replaced.
REPLACED_NOTE_KEY = "_correlation_id_replaced"
_RECEIVED_PREVIEW = 80

#: Called with the ASGI scope or WSGI environ; returns the user ID (or ``None``).
UserResolver = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Correlation:
    """The correlation ID a request runs with and, if the inbound one was refused, why."""

    value: str
    note: dict[str, Any] | None = None


def correlation_for(received: str | None, header: str) -> Correlation:
    """Validate an inbound correlation ID; generate one when absent, replace it when invalid.

    An invalid value (more than 64 characters, or characters outside ``[A-Za-z0-9._-]``)
    never reaches the store as a correlation ID: a new ID is used, the refusal is logged
    (rate-limited) and noted in the ``context`` of the request's records.
    """
    if received is None or received == "":
        return Correlation(uuid7().hex)
    if is_valid_correlation_id(received):
        return Correlation(received)
    replacement = uuid7().hex
    reason = "too long" if len(received) > 64 else "invalid characters"
    log_internal_error("invalid_correlation_id", logging.WARNING,
                       "invalid %s header (%s) replaced by %s", header, reason, replacement)
    return Correlation(replacement, {REPLACED_NOTE_KEY: {
        "received": received[:_RECEIVED_PREVIEW],
        "received_length": len(received),
        "reason": reason,
    }})


def request_context(
    *,
    client_ip: str | None,
    user_agent: str | None,
    path: str | None,
    method: str | None,
    user_id: Any,
    note: dict[str, Any] | None,
) -> RequestContext:
    """The :class:`RequestContext` records inside the request pick up."""
    return RequestContext(
        client_ip=client_ip,
        user_agent=user_agent,
        request_path=path,
        request_method=method,
        user_id=None if user_id is None else str(user_id),
        extra=note or {},
    )


def resolve_user(resolver: UserResolver | None, request: Any) -> Any:
    """Call the user resolver; a failing resolver means "unknown user", never a 500."""
    if resolver is None:
        return None
    try:
        return resolver(request)
    except Exception:
        log_internal_error("user_resolver", logging.ERROR, "audit user resolver failed",
                           exc_info=True)
        return None
