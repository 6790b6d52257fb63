"""The OpenAPI 3.1 document of the console's JSON API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]

_FILTERS = ["range", "start", "end", "actor", "acting_as", "auth_method", "action",
            "resource_type", "resource_id", "team", "outcome", "classification", "review",
            "service", "trace_id", "client_ip", "q"]

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _query(name: str, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"},
            "description": description or f"filter: {name}"}


_RECORD_ID = {"name": "record_id", "in": "path", "required": True, "schema": {"type": "string"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "otel_audit console API", "version": "1",
             "description": "Read the audit trail, run reports, review records. Every read "
                            "is itself recorded as audit.read with the caller as actor."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                            "session": {"type": "apiKey", "in": "cookie",
                                        "name": "otel_audit_session"}},
        "schemas": {"Error": {"type": "object", "required": ["error", "status"],
                              "properties": {"error": {"type": "string"},
                                             "status": {"type": "integer"}}}},
    },
    "security": [{"bearer": []}, {"session": []}],
    "paths": {
        "/healthz": {"get": {"summary": "Liveness and store reachability", "security": [],
                             "responses": {"200": {"description": "ok"}, "503": _ERROR}}},
        "/api/records": {"get": {
            "summary": "Search records, newest first (keyset pagination)",
            "parameters": [*[_query(n) for n in _FILTERS],
                           _query("after", "opaque cursor: the `next` of the previous page"),
                           _query("limit", "page size, 1..500")],
            "responses": {"200": {"description": "`{records: [...], next: cursor|null}`"},
                          "400": _ERROR, "401": _ERROR}}},
        "/api/records/{record_id}": {"get": {
            "summary": "One record and its reviews", "parameters": [_RECORD_ID],
            "responses": {"200": {"description": "`{record, reviews}`"}, "404": _ERROR}}},
        "/api/records/{record_id}/review": {"post": {
            "summary": "Mark a record reviewed (four eyes: never your own)",
            "parameters": [_RECORD_ID, {"name": "X-CSRF-Token", "in": "header",
                                        "required": False, "schema": {"type": "string"},
                                        "description": "required with a session cookie"}],
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"note": {"type": "string"}}}}}},
            "responses": {"200": {"description": "the review record"}, "403": _ERROR,
                          "409": _ERROR}}},
        "/api/reports": {"get": {"summary": "The report pack",
                                 "responses": {"200": {"description": "`{reports: [...]}`"}}}},
        "/api/reports/{name}": {"get": {
            "summary": "Run one report over the viewer's scope; parameters as query parameters",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "`{columns, rows}`"}, "403": _ERROR,
                          "404": _ERROR}}},
        "/api/searches": {"get": {"summary": "The viewer's saved searches",
                                  "responses": {"200": {"description": "`{searches: [...]}`"},
                                                "404": _ERROR}}},
        "/api/integrity": {"get": {"summary": "Last verification, running one, checkpoints",
                                   "responses": {"200": {"description": "summary"}}}},
    },
}
