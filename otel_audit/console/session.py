"""Who is asking: the console's shared state, sign-in, sessions and CSRF checks.

Pages (:mod:`.pages`) and the API (:mod:`.api`) get the signed-in user from
:func:`authenticate` and refuse an unsafe request without the session's CSRF token.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from .auth import SessionCodec, User, UserDirectory
from .data import ConsoleData
from .query import Viewer

if TYPE_CHECKING:
    from .searches import SavedSearches

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "Auth", "ConsoleSettings", "ConsoleState",
           "authenticate", "check_csrf", "new_login_nonce", "set_session_cookie",
           "state_of"]

SESSION_COOKIE = "otel_audit_session"
LOGIN_COOKIE = "otel_audit_login"


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """How the console behaves (see ``docs/console.md``)."""

    export_max_rows: int = 100_000
    page_size: int = 50
    trace_url: str | None = None
    auth_header: str | None = None
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    session_max_age: int = 8 * 3600
    saved_searches: SavedSearches | None = None  # None: not configured


@dataclass(slots=True)
class ConsoleState:
    """What every request handler shares."""

    data: ConsoleData
    users: UserDirectory
    sessions: SessionCodec
    settings: ConsoleSettings
    templates: Jinja2Templates
    verify_runs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Auth:
    """The signed-in user, how they signed in and their session's CSRF token."""

    user: User
    via: str  # "bearer" | "cookie" | "header"
    csrf: str
    new_cookie: str | None = None

    @property
    def viewer(self) -> Viewer:
        """The scoping identity of the user."""
        return self.user.viewer


def state_of(request: Request) -> ConsoleState:
    """The console state of the application serving ``request``."""
    state: ConsoleState = request.app.state.console
    return state


def authenticate(request: Request) -> Auth | None:
    """The user behind ``request``: trusted header, bearer token or session cookie."""
    state = state_of(request)
    header = state.settings.auth_header
    session = request.cookies.get(SESSION_COOKIE)
    if header and request.client is not None and request.client.host in \
            state.settings.trusted_proxies and request.headers.get(header):
        user = state.users.by_name.get(request.headers[header].strip())
        if user is None:
            return None
        loaded = state.sessions.load(session) if session else None
        if loaded is not None and loaded[0] == user.name:
            return Auth(user, "header", loaded[1])
        cookie, csrf = state.sessions.dump(user.name)
        return Auth(user, "header", csrf, new_cookie=cookie)
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        user = state.users.by_token(authorization[7:].strip())
        return Auth(user, "bearer", "") if user is not None else None
    if session:
        loaded = state.sessions.load(session)
        if loaded is not None:
            user = state.users.by_name.get(loaded[0])
            if user is not None:
                return Auth(user, "cookie", loaded[1])
    return None


def check_csrf(auth: Auth, supplied: str | None) -> None:
    """Refuse (403) an unsafe request of a cookie session without its CSRF token."""
    if auth.via == "bearer":
        return  # a bearer token is never sent by a browser on its own
    if not supplied or not hmac.compare_digest(supplied, auth.csrf):
        raise HTTPException(403, "missing or wrong CSRF token")


def set_session_cookie(request: Request, response: Response, value: str, max_age: int) -> None:
    """Set the signed session cookie: HttpOnly, SameSite=Strict, Secure under TLS."""
    response.set_cookie(SESSION_COOKIE, value, max_age=max_age, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")


def new_login_nonce() -> str:
    """A one-time value tying the sign-in form to its cookie (login CSRF)."""
    return secrets.token_urlsafe(16)
