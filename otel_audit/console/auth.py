"""Who may use the console: users and their token hashes, sessions, CSRF, trusted headers.

Users come from a TOML or JSON file (``--users FILE``) or ``OTEL_AUDIT_CONSOLE_USERS``
(a path, or the JSON text itself)::

    [[users]]
    name = "alice"
    role = "auditor"            # auditor: read, review, export; admin: also integrity
    teams = ["payments"]        # "*": every team
    token_sha256 = "9f86d08..."  # otel-audit ui --hash-token

Only a token's SHA-256 is stored: tokens are long random strings (``--hash-token``
makes one), so a fast hash is enough and a stolen file yields no usable token.
Sessions are cookies signed with ``itsdangerous`` (a name and a CSRF token, nothing
else), checked on every request against the current users.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..errors import ConfigError
from .query import Viewer

__all__ = [
    "ROLES",
    "SessionCodec",
    "User",
    "UserDirectory",
    "hash_token",
    "load_users",
    "new_token",
]

ROLES = ("auditor", "admin")
_HASH_PREFIX = "sha256:"


def new_token() -> str:
    """A new random sign-in token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of ``token``: ``sha256:<hex>``."""
    return _HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class User:
    """One console user: name, role, teams and the hash of their token (may be empty)."""

    name: str
    role: str
    teams: tuple[str, ...]
    token_hash: str = ""

    @property
    def viewer(self) -> Viewer:
        """The scoping identity of this user."""
        return Viewer(self.name, self.role, self.teams)


def _user(entry: Any, where: str) -> User:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: each user must be a table/object")
    name = entry.get("name")
    role = entry.get("role", "auditor")
    teams = entry.get("teams", [])
    token_hash = entry.get("token_sha256") or entry.get("token_hash") or ""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: a user needs a name")
    if role not in ROLES:
        raise ConfigError(f"{where}: user {name!r}: role must be one of {', '.join(ROLES)}")
    if isinstance(teams, str):
        teams = [teams]
    if not isinstance(teams, list) or not all(isinstance(t, str) for t in teams):
        raise ConfigError(f"{where}: user {name!r}: teams must be a list of names")
    if not isinstance(token_hash, str):
        raise ConfigError(f"{where}: user {name!r}: token_sha256 must be text")
    token_hash = token_hash.strip().lower()
    if token_hash and not token_hash.startswith(_HASH_PREFIX):
        token_hash = _HASH_PREFIX + token_hash
    digest = token_hash.removeprefix(_HASH_PREFIX)
    if token_hash and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
        raise ConfigError(f"{where}: user {name!r}: token_sha256 must be 64 hex digits")
    return User(name.strip(), role, tuple(teams), token_hash)


def load_users(source: str | os.PathLike[str]) -> list[User]:
    """Read users from a TOML/JSON file, or from JSON text (``OTEL_AUDIT_CONSOLE_USERS``)."""
    text = str(source)
    where = "console users"
    if text.lstrip().startswith(("[", "{")):  # JSON text (no users file is named so)
        document: Any = _parse_json(text, where)
    else:
        path = Path(source)
        where = str(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the console users file {path}: {exc}") from exc
        if path.suffix.lower() == ".json" or raw.lstrip().startswith("{"):
            document = _parse_json(raw, where)
        else:
            try:
                document = tomllib.loads(raw)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{where}: invalid TOML: {exc}") from exc
    entries = document.get("users") if isinstance(document, Mapping) else document
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected a list of users (or a 'users' list)")
    users = [_user(entry, where) for entry in entries]
    names = [u.name for u in users]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: user names must be unique")
    return users


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid JSON: {exc}") from exc


class UserDirectory:
    """The users by name and by token hash (constant-time comparison of hashes)."""

    def __init__(self, users: Iterable[User]) -> None:
        self.by_name = {u.name: u for u in users}

    def __len__(self) -> int:
        return len(self.by_name)

    def by_token(self, token: str) -> User | None:
        """The user whose token this is, or ``None``."""
        if not token or len(token) > 512:
            return None
        candidate = hash_token(token)
        found = None
        for user in self.by_name.values():  # compare with every hash: no early exit
            if user.token_hash and hmac.compare_digest(user.token_hash, candidate):
                found = user
        return found


class SessionCodec:
    """Signed session cookies: ``{"u": name, "c": csrf}``, valid for ``max_age`` seconds."""

    def __init__(self, secret: str | bytes | None, *, max_age: int = 8 * 3600) -> None:
        # without a configured secret, sessions end with the process (and are per process)
        self._serializer = URLSafeTimedSerializer(secret or secrets.token_bytes(32),
                                                  salt="otel-audit-console-session")
        self.max_age = max_age

    def dump(self, user: str) -> tuple[str, str]:
        """A new session cookie value for ``user`` and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        return self._serializer.dumps({"u": user, "c": csrf}), csrf

    def load(self, value: str) -> tuple[str, str] | None:
        """``(user, csrf)`` of a valid cookie, else ``None``."""
        try:
            data = self._serializer.loads(value, max_age=self.max_age)
        except BadSignature:
            return None
        if (not isinstance(data, dict) or not isinstance(data.get("u"), str)
                or not isinstance(data.get("c"), str)):
            return None
        return data["u"], data["c"]
