"""``AuditContextMiddleware``: request context for ASGI apps (Starlette, FastAPI).

::

    app.add_middleware(AuditContextMiddleware, user_resolver=lambda scope: ...)

Per HTTP or WebSocket connection it puts the client address, user agent, path, method
and (optionally) the resolved caller into context, so audit calls inside the request pick
them up when they are not passed. The resolver returns the user ID, or a
:class:`RequestIdentity` (or a mapping of its fields) adding the email, team,
``auth_method``, ``acting_as`` and ``delegation_chain``. The inbound correlation header
is validated and used when no trace is active (a trace ID always wins); the response
echoes the correlation ID in effect.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._internal import log_internal_error
from ..context import correlation_scope, current_correlation_id, request_scope
from ._request import (
    DEFAULT_HEADER,
    RequestIdentity,
    UserResolver,
    as_identity,
    correlation_for,
    request_context,
    resolve_user,
)

__all__ = ["AuditContextMiddleware", "RequestIdentity"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AuditContextMiddleware:
    """Pure ASGI middleware (no response buffering, context flows into the endpoint).

    ``AuditContextMiddleware(app, *, header_name="X-Correlation-ID",
    user_resolver=None, echo_header=True)``. ``user_resolver(scope)`` may be a plain
    function or a coroutine function returning the user ID, a :class:`RequestIdentity`
    or a mapping of its fields, or ``None``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header_name: str = DEFAULT_HEADER,
        user_resolver: UserResolver | None = None,
        echo_header: bool = True,
    ) -> None:
        self.app = app
        self.header_name = header_name
        self._header_key = header_name.lower().encode("latin-1")
        self.user_resolver = user_resolver
        self.echo_header = echo_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with the request context set."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        received = user_agent = None
        for name, value in scope.get("headers") or ():
            if name == self._header_key:
                received = value.decode("latin-1")
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
        correlation = correlation_for(received, self.header_name)
        user = resolve_user(self.user_resolver, scope)
        if inspect.isawaitable(user):
            try:
                user = await user
            except Exception:  # an unknown user, never a failed request
                log_internal_error("user_resolver", logging.ERROR, "audit user resolver failed",
                                   exc_info=True)
                user = None
        client = scope.get("client")
        ctx = request_context(
            client_ip=client[0] if client else None,
            user_agent=user_agent,
            path=scope.get("path"),
            method=scope.get("method"),
            identity=as_identity(user),
            note=correlation.note,
        )
        header_key, fallback = self._header_key, correlation.value

        async def send_with_correlation(message: Message) -> None:
            if message["type"] == "http.response.start":
                value = (current_correlation_id() or fallback).encode("latin-1")
                headers = [h for h in message.get("headers", ()) if h[0].lower() != header_key]
                headers.append((header_key, value))
                message = {**message, "headers": headers}
            await send(message)

        with request_scope(ctx), correlation_scope(correlation.value):
            await self.app(scope, receive, send_with_correlation if self.echo_header else send)

