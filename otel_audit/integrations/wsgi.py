"""``AuditContextMiddleware``: request context for WSGI apps (Flask, Django, ...).

::

    app.wsgi_app = AuditContextMiddleware(app.wsgi_app, user_resolver=lambda environ: ...)

The same behaviour as :mod:`otel_audit.integrations.asgi`. The app and the iteration
of its response body run in one copied :mod:`contextvars` context, so records made
while a streamed body is produced still see the request.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from ..context import _correlation_id, _request_context, current_correlation_id
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

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class AuditContextMiddleware:
    """WSGI middleware: ``AuditContextMiddleware(app, *, header_name="X-Correlation-ID",
    user_resolver=None, echo_header=True)``; ``user_resolver(environ)`` returns the
    user ID, a :class:`RequestIdentity` or a mapping of its fields, or ``None``."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        header_name: str = DEFAULT_HEADER,
        user_resolver: UserResolver | None = None,
        echo_header: bool = True,
    ) -> None:
        self.app = app
        self.header_name = header_name
        self._environ_key = "HTTP_" + header_name.upper().replace("-", "_")
        self.user_resolver = user_resolver
        self.echo_header = echo_header

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """Run the app (and its body iteration) with the request context set."""
        correlation = correlation_for(environ.get(self._environ_key), self.header_name)
        ctx = contextvars.copy_context()
        ctx.run(_correlation_id.set, correlation.value)
        request = request_context(
            client_ip=environ.get("REMOTE_ADDR") or None,
            user_agent=environ.get("HTTP_USER_AGENT"),
            path=(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or None,
            method=environ.get("REQUEST_METHOD"),
            identity=as_identity(ctx.run(resolve_user, self.user_resolver, environ)),
            note=correlation.note,
        )
        ctx.run(_request_context.set, request)
        header, fallback = self.header_name, correlation.value

        def start_with_correlation(status: str, headers: list[tuple[str, str]],
                                   exc_info: ExcInfo | None = None) -> Callable[[bytes], object]:
            # called from inside the app, so the current context is the request's
            value = current_correlation_id() or fallback
            headers = [h for h in headers if h[0].lower() != header.lower()]
            headers.append((header, value))
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        respond = start_with_correlation if self.echo_header else start_response
        body = ctx.run(self.app, environ, respond)
        return _ContextBody(body, ctx)


class _ContextBody:
    """The app's response iterable, iterated and closed inside the request's context."""

    def __init__(self, body: Iterable[bytes], ctx: contextvars.Context) -> None:
        self._body = body
        self._iter: Iterator[bytes] | None = None
        self._ctx = ctx

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iter is None:
            self._iter = self._ctx.run(iter, self._body)
        return self._ctx.run(next, self._iter)

    def close(self) -> None:
        """Close the app's iterable (PEP 3333), inside the request's context."""
        close = getattr(self._body, "close", None)
        if close is not None:
            self._ctx.run(close)
