"""The console's HTML pages (server-rendered with Jinja2; a little vendored JS for charts)."""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from ..errors import QueryError
from .api import request_meta, require, run_report
from .data import ReviewError
from .export import EXPORT_FORMATS, export_chunks
from .integrity import checkpoints_document, integrity_summary, record_integrity, start_verify
from .query import RANGE_PRESETS, Filters, decode_cursor, encode_cursor
from .session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Auth,
    ConsoleSettings,
    authenticate,
    check_csrf,
    new_login_nonce,
    set_session_cookie,
    state_of,
)
from .views import (
    chain_steps,
    chart_data,
    diff_values,
    page_url,
    pretty_json,
    safe_trace_url,
    timeline,
)

__all__ = ["install_filters", "routes"]


def install_filters(templates: Jinja2Templates, settings: ConsoleSettings) -> None:
    """Template helpers (escaping stays on: every value is data, never markup)."""
    env = templates.env
    env.autoescape = True
    env.filters["pretty"] = pretty_json
    env.filters["utc"] = lambda ts: ts.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] \
        + "Z" if isinstance(ts, dt.datetime) else ts
    env.filters["short"] = lambda s, n=80: s if not isinstance(s, str) or len(s) <= n \
        else s[:n] + "…"
    env.globals["trace_link"] = lambda trace_id: safe_trace_url(settings.trace_url, trace_id)
    env.globals["page_url"] = page_url
    env.globals["chain_steps"] = chain_steps
    env.globals["range_presets"] = list(RANGE_PRESETS)


def _render(request: Request, auth: Auth | None, template: str, context: dict[str, Any],
            status: int = 200) -> Response:
    templates = state_of(request).templates
    response = templates.TemplateResponse(
        request, template, {"auth": auth, "csrf": auth.csrf if auth else "", **context},
        status_code=status)
    if auth is not None and auth.new_cookie:
        set_session_cookie(request, response, auth.new_cookie,
                           state_of(request).settings.session_max_age)
    return response


def _page_auth(request: Request) -> Auth | Response:
    auth = authenticate(request)
    if auth is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
    return auth


def _safe_next(target: str | None) -> str:
    # only a path on this site: never an open redirect
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# ------------------------------------------------------------------ sign-in

async def login_page(request: Request) -> Response:
    """The sign-in form (token)."""
    nonce = new_login_nonce()
    response = _render(request, None, "login.html",
                       {"next": _safe_next(request.query_params.get("next")), "nonce": nonce,
                        "error": None})
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=600, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/login")
    return response


async def login(request: Request) -> Response:
    """Check the token; on success set the signed session cookie."""
    form = await request.form()
    nonce = str(form.get("csrf", ""))
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not hmac.compare_digest(nonce, cookie):
        raise HTTPException(403, "the sign-in form expired; reload it")
    state = state_of(request)
    user = state.users.by_token(str(form.get("token", "")).strip())
    target = _safe_next(str(form.get("next", "/")))
    if user is None:
        fresh = new_login_nonce()
        response = _render(request, None, "login.html",
                           {"next": target, "nonce": fresh, "error": "unknown token"}, 401)
        response.set_cookie(LOGIN_COOKIE, fresh, max_age=600, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https",
                            path="/login")
        return response
    value, _csrf = state.sessions.dump(user.name)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response, value, state.settings.session_max_age)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: Request) -> Response:
    """End the session (a POST with the CSRF token)."""
    auth = require(request)
    form = await request.form()
    check_csrf(auth, str(form.get("csrf", "")))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ------------------------------------------------------------------ search and export

async def search_page(request: Request) -> Response:
    """The home page: filters in the URL, newest first, keyset pages."""
    auth = _page_auth(request)
    if isinstance(auth, Response):
        return auth
    state = state_of(request)
    params = dict(request.query_params)
    filters = Filters.from_params(params)
    after = decode_cursor(params["after"]) if params.get("after") else None
    size = state.settings.page_size
    records, archived = await run_in_threadpool(state.data.search_page, auth.viewer, filters,
                                                after=after, limit=size + 1)
    more = len(records) > size
    records = records[:size]
    state.data.audit("audit.read", auth.viewer, resource_id="search",
                     context={"filters": filters.to_params(), "after": params.get("after"),
                              "returned": len(records)}, **request_meta(request))
    base = filters.to_params()
    nxt = (page_url("/", base, after=encode_cursor(records[-1].timestamp, records[-1].id))
           if more and records else None)
    saved = state.settings.saved_searches
    mine = await run_in_threadpool(saved.list, auth.user.name) if saved is not None else None
    return _render(request, auth, "search.html", {
        "records": records, "filters": filters, "params": base, "next_url": nxt,
        "saved": mine, "query": page_url("", base).lstrip("?"), "archived": archived,
        "first_url": page_url("/", base) if after else None, "title": "Search",
        "formats": list(EXPORT_FORMATS), "cap": state.settings.export_max_rows})


async def export(request: Request) -> Response:
    """The current search as CSV, JSON lines or Parquet, streamed, capped."""
    auth = require(request)
    state = state_of(request)
    params = dict(request.query_params)
    fmt = params.pop("format", "csv")
    if fmt not in EXPORT_FORMATS:
        raise HTTPException(400, f"format must be one of {', '.join(EXPORT_FORMATS)}")
    filters = Filters.from_params(params)
    cap = state.settings.export_max_rows
    if params.get("max_rows"):
        try:
            cap = max(1, min(cap, int(params["max_rows"])))
        except ValueError as exc:
            raise HTTPException(400, "max_rows must be an integer") from exc
    state.data.audit("audit.export", auth.viewer, resource_id="search",
                     context={"filters": filters.to_params(), "format": fmt, "max_rows": cap},
                     **request_meta(request))
    media, ext = EXPORT_FORMATS[fmt]
    records = state.data.iter_search(auth.viewer, filters, cap=cap)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        export_chunks(records, fmt), media_type=media,
        headers={"content-disposition": f'attachment; filename="audit-{stamp}.{ext}"',
                 "x-export-max-rows": str(cap)})


# ------------------------------------------------------------------ one record

async def record_page(request: Request) -> Response:
    """Every field, the diff, raw JSON, related records, reviews and integrity state."""
    auth = _page_auth(request)
    if isinstance(auth, Response):
        return auth
    state = state_of(request)
    record_id = request.path_params["record_id"]
    record, archived = await run_in_threadpool(state.data.find_record, auth.viewer, record_id)
    if record is None:
        raise HTTPException(404, "no such record (or not visible to you)")
    state.data.audit("audit.read", auth.viewer, resource_type="audit_record",
                     resource_id=record_id, context={"page": "record", "archived": archived},
                     **request_meta(request))
    related = await run_in_threadpool(state.data.related, auth.viewer, record)
    reviews = (await run_in_threadpool(state.data.reviews, [record_id])).get(record_id, [])
    try:
        integrity = ({"state": "archived", "problems": [
            "read from the Parquet archive: its files are checked against the archive's "
            "manifest by otel-audit verify --archive"]} if archived
            else await run_in_threadpool(record_integrity, state.data, record))
    except Exception as exc:  # a store without chain tables still shows the record
        integrity = {"state": "unknown", "problems": [str(exc).split("\n", 1)[0][:200]]}
    from .export import record_dict

    return _render(request, auth, "record.html", {
        "record": record, "fields": record_dict(record), "related": related,
        "reviews": reviews, "integrity": integrity, "title": f"Record {record_id}",
        "diff": diff_values(record.old_values, record.new_values),
        "can_review": (not reviews and record.user_id != auth.user.name
                       and record.action not in {"audit.read", "audit.review", "audit.export"}),
    })


# ------------------------------------------------------------------ review queue

async def review_page(request: Request) -> Response:
    """Records that require review and have none yet, oldest first."""
    auth = _page_auth(request)
    if isinstance(auth, Response):
        return auth
    state = state_of(request)
    params = dict(request.query_params)
    params.setdefault("range", "all")
    filters = Filters.from_params(params)
    after = decode_cursor(params["after"]) if params.get("after") else None
    size = state.settings.page_size
    records, archived = await run_in_threadpool(state.data.review_queue_page, auth.viewer,
                                                filters, limit=size + 1, after=after)
    more = len(records) > size
    records = records[:size]
    state.data.audit("audit.read", auth.viewer, resource_id="review_queue",
                     context={"filters": filters.to_params()}, **request_meta(request))
    base = filters.to_params()
    base.setdefault("range", filters.range)
    nxt = (page_url("/review", base, after=encode_cursor(records[-1].timestamp,
                                                          records[-1].id))
           if more and records else None)
    return _render(request, auth, "review.html", {
        "records": records, "filters": filters, "params": base, "next_url": nxt,
        "title": "Review queue", "message": request.query_params.get("message"),
        "archived": archived})


async def review_submit(request: Request) -> Response:
    """Mark one record, or every checked one, reviewed with one note."""
    auth = require(request)
    form = await request.form()
    check_csrf(auth, str(form.get("csrf", "")))
    note = str(form.get("note", "")).strip()
    if not note:
        raise HTTPException(400, "a review needs a note")
    ids = [str(v) for v in form.getlist("record_id")][:500]
    if not ids:
        raise HTTPException(400, "no record selected")
    state = state_of(request)
    done, refused = 0, []
    for record_id in ids:
        try:
            await run_in_threadpool(state.data.review, auth.viewer, record_id, note,
                                    **request_meta(request))
            done += 1
        except ReviewError as exc:
            refused.append(f"{record_id}: {exc}")
    back = _safe_next(str(form.get("back", "/review")))
    if len(ids) == 1 and refused:
        raise HTTPException(409, refused[0])
    message = f"{done} reviewed" + (f"; refused: {'; '.join(refused[:5])}" if refused else "")
    sep = "&" if "?" in back else "?"
    return RedirectResponse(back + sep + urlencode({"message": message}), status_code=303)


# ------------------------------------------------------------------ resource and actor

async def resource_page(request: Request) -> Response:
    """The history of one resource, newest first."""
    auth = _page_auth(request)
    if isinstance(auth, Response):
        return auth
    state = state_of(request)
    rtype, rid = request.path_params["resource_type"], request.path_params["resource_id"]
    filters = Filters(range="all", resource_type=rtype, resource_id=rid)
    records, archived = await run_in_threadpool(state.data.search_page, auth.viewer, filters,
                                                limit=200)
    state.data.audit("audit.read", auth.viewer, resource_id="resource",
                     context={"resource_type": rtype, "resource_id": rid},
                     **request_meta(request))
    return _render(request, auth, "history.html", {
        "records": records, "title": f"Resource {rtype}/{rid}", "chart": None,
        "archived": archived,
        "accessed": None, "search_url": page_url("/", filters.to_params())})


async def actor_page(request: Request) -> Response:
    """One actor's activity: a 30-day timeline and what they accessed."""
    auth = _page_auth(request)
    if isinstance(auth, Response):
        return auth
    state = state_of(request)
    actor = request.path_params["actor"]
    filters = Filters(range="30d", actor=actor)
    records, archived = await run_in_threadpool(state.data.search_page, auth.viewer, filters,
                                                limit=5000)
    state.data.audit("audit.read", auth.viewer, resource_id="actor",
                     context={"actor": actor}, **request_meta(request))
    accessed: dict[tuple[str, str], int] = {}
    for r in records:
        if r.resource_type:
            key = (r.resource_type, r.resource_id or "")
            accessed[key] = accessed.get(key, 0) + 1
    top = sorted(accessed.items(), key=lambda kv: -kv[1])[:50]
    return _render(request, auth, "history.html", {
        "records": records[:200], "title": f"Actor {actor}", "chart": timeline(records),
        "archived": archived,
        "accessed": top, "search_url": page_url("/", filters.to_params())})


# ------------------------------------------------------------------ reports

async def reports_page(request: Request) -> Response:
    """Every report of the pack with its parameters and controls."""
    auth = _page_auth(request)
    if isinstance(auth, Response):
        return auth
    from ..analytics.catalog import list_reports

    return _render(request, auth, "reports.html", {"reports": list_reports(),
                                                    "title": "Reports"})


async def report_page(request: Request) -> Response:
    """One report: its form; with ``run=1`` its table and chart; ``download=csv``."""
    auth = _page_auth(request)
    if isinstance(auth, Response):
        return auth
    from ..analytics.catalog import get_report

    name = request.path_params["name"]
    try:
        report = get_report(name)
    except QueryError as exc:
        raise HTTPException(404, str(exc)) from exc
    params = {k: v for k, v in request.query_params.items()
              if k not in {"run", "download"}}
    result = None
    if request.query_params.get("run") or request.query_params.get("download"):
        columns, types, rows = await run_in_threadpool(run_report, request, auth, name,
                                                       params)
        if request.query_params.get("download"):
            return _report_csv(name, columns, rows)
        result = {"columns": columns, "rows": rows,
                  "chart": chart_data(columns, types, rows)}
    return _render(request, auth, "report.html", {
        "report": report, "values": params, "result": result, "title": report.name,
        "download_url": page_url(f"/reports/{name}", params, download="csv")})


def _report_csv(name: str, columns: list[str], rows: list[tuple[Any, ...]]) -> Response:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([v.isoformat() if isinstance(v, dt.datetime | dt.date) else v
                         for v in row])
    return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}.csv"'})


# ------------------------------------------------------------------ integrity

async def integrity_page(request: Request) -> Response:
    """Last verification, checkpoints, findings; admins run verify."""
    auth = _page_auth(request)
    if isinstance(auth, Response):
        return auth
    state = state_of(request)
    summary = await run_in_threadpool(integrity_summary, state, auth)
    state.data.audit("audit.read", auth.viewer, resource_id="integrity",
                     context={"page": "integrity"}, **request_meta(request))
    return _render(request, auth, "integrity.html", {"summary": summary,
                                                      "title": "Integrity"})


async def integrity_verify(request: Request) -> Response:
    """Start a verification (admins, CSRF-checked form)."""
    auth = require(request, "admin")
    form = await request.form()
    check_csrf(auth, str(form.get("csrf", "")))
    start_verify(state_of(request), auth, request_meta(request))
    return RedirectResponse("/integrity", status_code=303)


async def integrity_checkpoints(request: Request) -> Response:
    """Download every checkpoint as a checkpoint export file (admins)."""
    auth = require(request, "admin")
    state = state_of(request)
    state.data.audit("audit.export", auth.viewer, resource_id="checkpoints",
                     context={"integrity": "export checkpoints"}, **request_meta(request))
    body = await run_in_threadpool(checkpoints_document, state)
    return Response(body, media_type="application/json",
                    headers={"content-disposition": 'attachment; filename="checkpoints.json"'})


def routes() -> list[BaseRoute]:
    """The pages' routes."""
    return [
        Route("/", search_page),
        Route("/login", login_page),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/export", export),
        Route("/records/{record_id}", record_page),
        Route("/review", review_page),
        Route("/review", review_submit, methods=["POST"]),
        Route("/resources/{resource_type}/{resource_id:path}", resource_page),
        Route("/actors/{actor:path}", actor_page),
        Route("/reports", reports_page),
        Route("/reports/{name}", report_page),
        Route("/integrity", integrity_page),
        Route("/integrity/verify", integrity_verify, methods=["POST"]),
        Route("/integrity/checkpoints.json", integrity_checkpoints),
    ]
