"""What the ASGI and WSGI middleware share: correlation-ID validation and the context."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from uuid_utils import uuid7

from .._internal import log_internal_error
from ..context import RequestContext, is_valid_correlation_id

__all__ = ["DEFAULT_HEADER", "REPLACED_NOTE_KEY", "RequestIdentity", "UserResolver",
           "as_identity", "correlation_for", "request_context"]

#: Default name of the inbound/outbound correlation header.
DEFAULT_HEADER = "X-Correlation-ID"
#: ``context`` key of records made in a request whose correlation header was replaced.
REPLACED_NOTE_KEY = "_correlation_id_replaced"
_RECEIVED_PREVIEW = 80

#: Called with the ASGI scope or WSGI environ; returns the user ID, a
#: :class:`RequestIdentity` or a mapping of its fields (or ``None``: an unknown caller).
UserResolver = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class RequestIdentity:
    """Who is calling and how: what a user resolver may return instead of a user ID.

    Each field given fills the record column of the same name when an audit call inside
    the request does not pass it. ``auth_method`` says how the caller authenticated
    (``"oauth"``, ``"api_key"``, ``"mtls"``, ...); ``acting_as`` is the user a service
    acts for; ``delegation_chain`` the principals the caller's authority was delegated
    through, in order, each ``{"principal": ..., "via": ...}`` (OAuth token exchange,
    a service account acting for a user).
    """

    user_id: str | None = None
    user_email: str | None = None
    team_id: str | None = None
    auth_method: str | None = None
    acting_as: str | None = None
    delegation_chain: list[dict[str, Any]] | None = None


_IDENTITY_FIELDS = tuple(f.name for f in dataclasses.fields(RequestIdentity))
_UNKNOWN = RequestIdentity()


def as_identity(resolved: Any) -> RequestIdentity:
    """What a resolver returned, as a :class:`RequestIdentity` (never raises).

    ``None`` is an unknown caller; a :class:`RequestIdentity` is taken as it is; a mapping
    gives the fields it names (other keys are ignored, and logged once); anything else is
    the user ID (as a string).
    """
    if resolved is None:
        return _UNKNOWN
    if isinstance(resolved, RequestIdentity):
        return resolved
    try:
        if isinstance(resolved, Mapping):
            unknown = sorted(str(key) for key in resolved if key not in _IDENTITY_FIELDS)
            if unknown:
                log_internal_error("user_resolver_keys", logging.WARNING,
                                   "audit user resolver returned unknown keys %s (ignored); "
                                   "it may return %s", unknown, ", ".join(_IDENTITY_FIELDS))
            identity = RequestIdentity(**{name: resolved[name] for name in _IDENTITY_FIELDS
                                          if resolved.get(name) is not None})
            user_id = identity.user_id
            if user_id is not None and not isinstance(user_id, str):
                identity = dataclasses.replace(identity, user_id=str(user_id))
            return identity
        return RequestIdentity(user_id=str(resolved))
    except Exception:  # a mapping or value that fails to convert: an unknown caller
        log_internal_error("user_resolver", logging.ERROR,
                           "audit user resolver returned an unusable value", exc_info=True)
        return _UNKNOWN


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
    identity: RequestIdentity,
    note: dict[str, Any] | None,
) -> RequestContext:
    """The :class:`RequestContext` records inside the request pick up."""
    return RequestContext(
        client_ip=client_ip,
        user_agent=user_agent,
        request_path=path,
        request_method=method,
        user_id=identity.user_id,
        user_email=identity.user_email,
        team_id=identity.team_id,
        acting_as=identity.acting_as,
        extra=note or {},
        auth_method=identity.auth_method,
        delegation_chain=identity.delegation_chain,
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
