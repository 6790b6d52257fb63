"""Saved searches per user, in a JSON file next to the users file.

Why a file and not a table: the console writes nothing to the store but its own
``audit.read`` / ``audit.review`` / ``audit.export`` records (a test holds it to that),
and a saved search is a viewer's bookmark, not audit evidence. Like the users file it
belongs to the deployment. Only the search's filters are kept (parsed by
:class:`~.query.Filters`, so a saved search is a valid search and nothing else); each
user sees and deletes only their own. Writes replace the file atomically (mode 0600).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import ConfigError
from .query import FilterError, Filters
from .session import check_csrf, state_of
from .views import page_url

__all__ = ["MAX_PER_USER", "SavedSearches", "routes"]

#: Searches one user may keep (the oldest goes first).
MAX_PER_USER = 100
_MAX_NAME = 100


class SavedSearches:
    """The saved searches of every user, kept in the JSON file ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._load()  # a broken file is a configuration error at start, not a lost list

    def _load(self) -> dict[str, list[dict[str, Any]]]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the saved searches in {self.path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.path}: expected an object of user -> searches")
        return {str(user): [s for s in found if isinstance(s, dict)]
                for user, found in raw.items() if isinstance(found, list)}

    def _write(self, data: dict[str, list[dict[str, Any]]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".saved-searches-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, user: str) -> list[dict[str, Any]]:
        """``user``'s searches: ``{"name", "params"}``, in the order they were saved.

        An entry whose filters no longer parse (edited by hand) is left out, not an error.
        """
        with self._lock:
            stored = self._load().get(user, [])
        out = []
        for entry in stored:
            raw = entry.get("params")
            try:
                params = Filters.from_params(
                    {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
                ).to_params()
            except FilterError:
                continue
            out.append({"name": str(entry.get("name", "")), "params": params})
        return out

    def save(self, user: str, name: str, params: dict[str, str]) -> None:
        """Save (or replace, by name) one search of ``user``; ``params`` are its filters."""
        name = " ".join(name.split())[:_MAX_NAME]
        if not name:
            raise HTTPException(400, "a saved search needs a name")
        filters = Filters.from_params(params).to_params()  # a FilterError is a 400
        with self._lock:
            data = self._load()
            mine = [s for s in data.get(user, []) if s.get("name") != name]
            mine.append({"name": name, "params": filters})
            data[user] = mine[-MAX_PER_USER:]
            self._write(data)

    def delete(self, user: str, name: str) -> bool:
        """Delete ``user``'s search ``name``; ``False`` when there was none."""
        with self._lock:
            data = self._load()
            mine = data.get(user, [])
            kept = [s for s in mine if s.get("name") != name]
            if len(kept) == len(mine):
                return False
            data[user] = kept
            self._write(data)
            return True


def _store(request: Request) -> SavedSearches:
    store: SavedSearches | None = state_of(request).settings.saved_searches
    if store is None:
        raise HTTPException(404, "saved searches are not configured (--saved-searches FILE)")
    return store


def _query_params(query: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query.lstrip("?"), keep_blank_values=False)[:64])


async def save_search(request: Request) -> Response:
    """``POST /searches`` (CSRF): save the search ``query`` under ``name``."""
    from .api import require

    auth = require(request)
    form = await request.form()
    check_csrf(auth, str(form.get("csrf", "")))
    params = _query_params(str(form.get("query", "")))
    await run_in_threadpool(_store(request).save, auth.user.name, str(form.get("name", "")),
                            params)
    return RedirectResponse(page_url("/", Filters.from_params(params).to_params()),
                            status_code=303)


async def delete_search(request: Request) -> Response:
    """``POST /searches/delete`` (CSRF): delete the viewer's search ``name``."""
    from .api import require

    auth = require(request)
    form = await request.form()
    check_csrf(auth, str(form.get("csrf", "")))
    found = await run_in_threadpool(_store(request).delete, auth.user.name,
                                    str(form.get("name", "")))
    if not found:
        raise HTTPException(404, "no saved search of that name")
    return RedirectResponse("/", status_code=303)


async def list_searches_api(request: Request) -> Response:
    """``GET /api/searches``: the viewer's saved searches with their URLs."""
    from .api import require

    auth = require(request)
    found = await run_in_threadpool(_store(request).list, auth.user.name)
    return JSONResponse({"searches": [{**s, "url": page_url("/", s["params"])}
                                      for s in found]})


def routes() -> list[Route]:
    """The saved-search routes."""
    return [Route("/searches", save_search, methods=["POST"]),
            Route("/searches/delete", delete_search, methods=["POST"]),
            Route("/api/searches", list_searches_api)]
