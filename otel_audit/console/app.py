"""The console's Starlette application: routes, security headers and error pages.

Pages live in :mod:`.pages`, the JSON API in :mod:`.api`, sign-in and CSRF in
:mod:`.session`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .._internal import log_internal_error
from ..errors import AuditError, ConfigError
from . import api, pages, searches
from .auth import SessionCodec, User, UserDirectory, load_users
from .data import ConsoleData
from .query import FilterError
from .searches import SavedSearches
from .session import ConsoleSettings, ConsoleState, state_of

__all__ = ["create_app"]

_HERE = Path(__file__).parent

#: Content Security Policy: nothing but this origin; no inline script or style.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class _SecurityHeaders:
    """Adds the CSP and friends to every response; no caching of audit data."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def wrapped(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [(b"content-security-policy", CSP.encode()),
                         (b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"same-origin"),
                         (b"x-frame-options", b"DENY")]
                if not static:
                    extra.append((b"cache-control", b"no-store"))
                headers += [(k, v) for k, v in extra if k not in names]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


def _error_response(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/") or request.url.path == "/healthz" or \
            "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"error": message, "status": status}, status_code=status)
    templates = state_of(request).templates
    return templates.TemplateResponse(request, "error.html",
                                      {"status": status, "message": message, "auth": None},
                                      status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error_response(request, exc.status_code, str(exc.detail))


async def _filter_error(request: Request, exc: Exception) -> Response:
    return _error_response(request, 400, str(exc))


async def _audit_error(request: Request, exc: Exception) -> Response:
    log_internal_error("console", 40, "console request failed: %s", exc)
    return _error_response(request, 503, str(exc).split("\n", 1)[0][:300])


async def _any_error(request: Request, exc: Exception) -> Response:
    # never a traceback to the client; the log has it
    # called inside Starlette's ``except`` block: exc_info finds the exception
    log_internal_error("console", 40, "console request failed: %s", type(exc).__name__,
                       exc_info=True)
    return _error_response(request, 500, "internal error (see the server log)")


def create_app(
    url: str,
    *,
    users: Iterable[User] | None = None,
    users_file: str | os.PathLike[str] | None = None,
    secret: str | bytes | None = None,
    archive_dir: str | None = None,
    trace_url: str | None = None,
    auth_header: str | None = None,
    trusted_proxies: Iterable[str] = ("127.0.0.1", "::1"),
    export_max_rows: int | None = None,
    trail: Any = None,
    hmac_key: str | None = None,
    saved_searches: str | os.PathLike[str] | None = None,
) -> Starlette:
    """The audit console for the store at ``url`` (mount it anywhere or serve it).

    Users come from ``users``, else ``users_file``, else ``OTEL_AUDIT_CONSOLE_USERS``.
    ``secret`` signs session cookies (default ``OTEL_AUDIT_CONSOLE_SECRET``, else a
    random key: sessions then end with the process). ``export_max_rows`` caps one
    export (default ``OTEL_AUDIT_CONSOLE_EXPORT_MAX_ROWS``, 100,000). ``auth_header`` (e.g.
    ``X-Forwarded-User``) is honoured only from ``trusted_proxies``. ``trail`` receives
    the console's own records (default: a trail on the same store). ``saved_searches``
    is the JSON file of the users' saved searches (default: ``saved-searches.json`` next
    to the users file; none when the users are given as objects).
    """
    from ..config import resolve_config

    config = resolve_config({"url": url})
    if users is None:
        source = users_file or config.console_users
        users = load_users(source) if source else []
        if saved_searches is None and source:
            saved_searches = Path(source).parent / "saved-searches.json"
    directory = UserDirectory(users)
    if export_max_rows is None:
        export_max_rows = config.console_export_max_rows
    if export_max_rows < 1:
        raise ConfigError("export_max_rows must be at least 1")
    settings = ConsoleSettings(
        export_max_rows=export_max_rows, trace_url=trace_url or config.trace_url,
        auth_header=auth_header, trusted_proxies=tuple(trusted_proxies),
        saved_searches=SavedSearches(saved_searches) if saved_searches is not None else None)
    data = ConsoleData(url, trail=trail, archive_dir=archive_dir or config.archive_dir,
                       hmac_key=hmac_key or config.hmac_key)
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    pages.install_filters(templates, settings)
    state = ConsoleState(data, directory, SessionCodec(
        secret or config.console_secret,
        max_age=settings.session_max_age), settings, templates)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        data.close()

    app = Starlette(
        routes=[*api.routes(), *pages.routes(), *searches.routes(),
                Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")],
        exception_handlers={HTTPException: _http_error, FilterError: _filter_error,
                            AuditError: _audit_error, Exception: _any_error},
        lifespan=lifespan,
    )
    app.state.console = state
    app.add_middleware(_SecurityHeaders)
    return app
