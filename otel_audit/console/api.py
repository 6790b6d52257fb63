"""The console's JSON API: the same sign-in, scoping and audit of reads as the pages."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import QueryError
from .data import ReviewError
from .export import record_dict
from .query import Filters, decode_cursor, encode_cursor
from .session import Auth, authenticate, check_csrf, state_of

__all__ = ["request_meta", "require", "routes", "run_report"]

MAX_LIMIT = 500


def require(request: Request, role: str | None = None) -> Auth:
    """The signed-in user (401 without one; 403 without ``role``)."""
    auth = authenticate(request)
    if auth is None:
        raise HTTPException(401, "sign in first (a bearer token or a session)")
    if role == "admin" and not auth.user.viewer.is_admin:
        raise HTTPException(403, "this needs the admin role")
    return auth


def request_meta(request: Request) -> dict[str, Any]:
    """Request fields of the console's own audit records."""
    return {"client_ip": request.client.host if request.client else None,
            "user_agent": request.headers.get("user-agent"),
            "request_path": request.url.path, "request_method": request.method}


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, ensure_ascii=False, default=str).encode()
    return Response(body, status_code=status, media_type="application/json")


def _limit(raw: str | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise HTTPException(400, "limit must be an integer") from exc
    if not 1 <= value <= MAX_LIMIT:
        raise HTTPException(400, f"limit must be between 1 and {MAX_LIMIT}")
    return value


async def healthz(request: Request) -> Response:
    """Liveness and store reachability (no sign-in, no data)."""
    ok = await run_in_threadpool(state_of(request).data.ping)
    return JSONResponse({"status": "ok" if ok else "store unreachable"},
                        status_code=200 if ok else 503)


async def list_records(request: Request) -> Response:
    """``GET /api/records?<filters>&after=<cursor>&limit=``: one page, newest first."""
    auth = require(request)
    state = state_of(request)
    params = dict(request.query_params)
    filters = Filters.from_params(params)
    after = decode_cursor(params["after"]) if params.get("after") else None
    limit = _limit(params.get("limit"), state.settings.page_size)
    records = await run_in_threadpool(state.data.search, auth.viewer, filters,
                                      after=after, limit=limit + 1)
    more = len(records) > limit
    records = records[:limit]
    state.data.audit("audit.read", auth.viewer, resource_id="search",
                     context={"api": True, "filters": filters.to_params(),
                              "after": params.get("after"), "returned": len(records)},
                     **request_meta(request))
    nxt = encode_cursor(records[-1].timestamp, records[-1].id) if more and records else None
    return _json({"records": [record_dict(r) for r in records], "next": nxt})


async def get_record(request: Request) -> Response:
    """``GET /api/records/{id}``: one record and its reviews."""
    auth = require(request)
    state = state_of(request)
    record_id = request.path_params["record_id"]
    record, archived = await run_in_threadpool(state.data.find_record, auth.viewer, record_id)
    if record is None:
        raise HTTPException(404, "no such record (or not visible to you)")
    reviews = await run_in_threadpool(state.data.reviews, [record_id])
    state.data.audit("audit.read", auth.viewer, resource_type="audit_record",
                     resource_id=record_id, context={"api": True}, **request_meta(request))
    return _json({"record": record_dict(record), "archived": archived,
                  "reviews": [{"reviewer": r.reviewer, "timestamp": r.timestamp.isoformat(),
                               "note": r.note, "review_id": r.review_id}
                              for r in reviews.get(record_id, [])]})


async def review_record(request: Request) -> Response:
    """``POST /api/records/{id}/review`` with ``{"note": ...}``: mark it reviewed."""
    auth = require(request)
    check_csrf(auth, request.headers.get("x-csrf-token"))
    try:
        body = await request.json()
    except ValueError as exc:
        raise HTTPException(400, "the body must be a JSON object") from exc
    note = body.get("note", "") if isinstance(body, dict) else None
    if not isinstance(note, str):
        raise HTTPException(400, "note must be text")
    state = state_of(request)
    try:
        review = await run_in_threadpool(state.data.review, auth.viewer,
                                         request.path_params["record_id"], note,
                                         **request_meta(request))
    except ReviewError as exc:
        raise HTTPException(409, str(exc)) from exc
    return _json({"reviewed": review.record_id, "reviewer": review.reviewer,
                  "review_id": review.review_id, "timestamp": review.timestamp.isoformat()})


def _report_info(report: Any) -> dict[str, Any]:
    return {"name": report.name, "description": report.description,
            "controls": list(report.controls),
            "params": [{"name": p.name, "type": p.type, "required": p.required,
                        "default": p.default, "doc": p.doc} for p in report.params]}


async def list_reports_api(request: Request) -> Response:
    """``GET /api/reports``: the report pack with parameters and controls."""
    require(request)
    from ..analytics.catalog import list_reports

    return _json({"reports": [_report_info(r) for r in list_reports()]})


def run_report(request: Request, auth: Auth, name: str, raw: dict[str, str],
               *, limit: int = 1000) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    """Run report ``name`` with ``raw`` parameters: (columns, types, rows); audited.

    Admins' reports read the whole trail; anyone else's run over an analytics view
    holding only their teams' non-restricted records (and no query of that analytics
    can read anything else).
    """
    from ..analytics.catalog import get_report
    try:
        report = get_report(name)
    except QueryError as exc:
        raise HTTPException(404, str(exc)) from exc
    known = {p.name: p for p in report.params}
    try:
        values = {k: known[k].convert(v) for k, v in raw.items() if k in known and v != ""}
    except QueryError as exc:  # a parameter of the wrong type: the caller's mistake
        raise HTTPException(400, str(exc)) from exc
    state = state_of(request)
    state.data.audit("audit.read", auth.viewer, resource_id=name,
                     context={"report": name, "params": {k: str(v) for k, v in values.items()}},
                     **request_meta(request))
    try:
        relation = state.data.analytics(auth.viewer).sql(report.sql, report.bind(values))
        columns = list(relation.columns)
        types = [str(t) for t in relation.types]
        rows = relation.fetchmany(limit)
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from exc
    return columns, types, rows


async def get_report_api(request: Request) -> Response:
    """``GET /api/reports/{name}?<params>``: the report's rows (up to 1000)."""
    auth = require(request)
    params = dict(request.query_params)
    columns, _types, rows = await run_in_threadpool(
        run_report, request, auth, request.path_params["name"], params)
    return _json({"columns": columns, "rows": [_plain(row) for row in rows]})


def _plain(row: tuple[Any, ...]) -> list[Any]:
    return [v.isoformat() if isinstance(v, dt.datetime | dt.date) else v for v in row]


async def integrity_api(request: Request) -> Response:
    """``GET /api/integrity``: the last verification the console ran, and any running."""
    auth = require(request)
    from .integrity import integrity_summary

    summary = await run_in_threadpool(integrity_summary, state_of(request), auth)
    return _json(summary)


async def openapi(request: Request) -> Response:
    """``GET /api/openapi.json``: the API's OpenAPI 3.1 document."""
    from .openapi import OPENAPI

    return _json(OPENAPI)


def routes() -> list[BaseRoute]:
    """The API's routes."""
    return [
        Route("/healthz", healthz),
        Route("/api/openapi.json", openapi),
        Route("/api/records", list_records),
        Route("/api/records/{record_id}", get_record),
        Route("/api/records/{record_id}/review", review_record, methods=["POST"]),
        Route("/api/reports", list_reports_api),
        Route("/api/reports/{name}", get_report_api),
        Route("/api/integrity", integrity_api),
    ]


