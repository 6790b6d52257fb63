"""The audit console: a web UI and JSON API for auditors (Starlette + Jinja2).

``create_app(url, ...)`` returns a Starlette application to serve (``otel-audit ui``)
or mount in an existing Starlette/FastAPI service. It reads the store read-only,
scoped to the signed-in user's teams, and writes only its own ``audit.read``,
``audit.review`` and ``audit.export`` records. See ``docs/console.md``.
"""

from __future__ import annotations

from .app import create_app
from .auth import User, hash_token, load_users, new_token

__all__ = ["User", "create_app", "hash_token", "load_users", "new_token"]
