"""Message bodies for text destinations: ``json``, ``cef`` (ArcSight) and ``leef`` (QRadar).

Every format carries the record ID (JSON ``id``, CEF ``externalId``, LEEF
``externalId``): the idempotency key a SIEM deduplicates on after a resend.

CEF: ``CEF:0|otel_audit|otel_audit|<version>|<action>|<name>|<severity>|<extension>``,
header fields escaping ``\\`` and ``|``, extension values ``\\``, ``=`` and line breaks
(ArcSight's "Implementing ArcSight CEF", revision 25). LEEF 2.0 with ``^`` as the
attribute delimiter, declared in the header (``LEEF:2.0|otel_audit|otel_audit|<version>|
<action>|^|key=value^key=value...``; IBM QRadar's LEEF guide): a tab, LEEF 1.0's
delimiter, is escaped to ``#011`` by syslog relays such as rsyslog. LEEF has no escape,
so ``^``, tabs and line breaks inside values become spaces (the JSON format is exact).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..record import AuditRecord
from .items import ForwardItem

__all__ = ["FORMATS", "format_cef", "format_json", "format_leef"]

try:
    _VERSION = version("otel_audit")
except PackageNotFoundError:  # running from a source tree
    _VERSION = "0"


def _iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_document(item: ForwardItem) -> dict[str, Any]:
    """The record as a JSON-ready document with its chain position."""
    doc = item.record._asdict()
    doc["timestamp"] = _iso(item.record.timestamp)
    doc["stream"] = item.stream
    doc["seq"] = item.seq
    return doc


def format_json(item: ForwardItem) -> str:
    """One compact JSON object per record (keys sorted)."""
    return json.dumps(record_document(item), ensure_ascii=False, separators=(",", ":"),
                      sort_keys=True, default=str)


def _cef_header(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace(
        "\n", " ")


def _cef_value(value: Any) -> str:
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return (str(value).replace("\\", "\\\\").replace("=", "\\=").replace("\r\n", "\\n")
            .replace("\n", "\\n").replace("\r", "\\r"))


def _severity(record: AuditRecord) -> int:
    """CEF 0-10: failures 7, records needing review 5, restricted data 6, else 3."""
    if not record.success:
        return 7
    if record.data_classification == "restricted":
        return 6
    return 5 if record.requires_review else 3


def _common(record: AuditRecord) -> list[tuple[str, Any]]:
    return [
        ("suser", record.user_id), ("suid", record.user_email), ("src", record.client_ip),
        ("requestMethod", record.request_method), ("request", record.request_path),
        ("requestClientApplication", record.user_agent),
    ]


def format_cef(item: ForwardItem) -> str:
    """One CEF event; custom strings name the resource, team, trace and classification."""
    r = item.record
    name = f"{r.action} {r.resource_type}" if r.resource_type else r.action
    ext: list[tuple[str, Any]] = [
        ("rt", int(r.timestamp.timestamp() * 1000)),
        ("externalId", r.id),
        ("act", r.action),
        ("outcome", "success" if r.success else "failure"),
        *_common(r),
        ("cs1Label", "resource"), ("cs1", f"{r.resource_type or ''}/{r.resource_id or ''}"),
        ("cs2Label", "team"), ("cs2", r.team_id),
        ("cs3Label", "trace_id"), ("cs3", r.trace_id),
        ("cs4Label", "classification"), ("cs4", r.data_classification),
        ("cs5Label", "stream"), ("cs5", item.stream),
        ("cn1Label", "seq"), ("cn1", item.seq),
        ("dvchost", r.service_name),
        ("msg", r.error_message),
    ]
    extension = " ".join(f"{k}={_cef_value(v)}" for k, v in ext if v is not None and v != "")
    header = "|".join(_cef_header(v) for v in (
        "CEF:0", "otel_audit", "otel_audit", _VERSION, r.action, name, _severity(r)))
    return f"{header}|{extension}"


def _leef_value(value: Any) -> str:
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return (str(value).replace("^", " ").replace("\t", " ").replace("\r", " ")
            .replace("\n", " "))


def format_leef(item: ForwardItem) -> str:
    """One LEEF 2.0 event, attributes delimited by ``^``."""
    r = item.record
    attrs: list[tuple[str, Any]] = [
        ("devTime", _iso(r.timestamp)), ("devTimeFormat", "yyyy-MM-dd'T'HH:mm:ss.SSSSSSX"),
        ("externalId", r.id), ("cat", r.resource_type), ("usrName", r.user_id),
        ("email", r.user_email), ("src", r.client_ip), ("sev", _severity(r)),
        ("outcome", "success" if r.success else "failure"),
        ("resource", r.resource_id), ("team", r.team_id), ("traceId", r.trace_id),
        ("classification", r.data_classification), ("url", r.request_path),
        ("method", r.request_method), ("userAgent", r.user_agent),
        ("stream", item.stream), ("seq", item.seq), ("msg", r.error_message),
    ]
    body = "^".join(f"{k}={_leef_value(v)}" for k, v in attrs if v is not None and v != "")
    header = "|".join(_cef_header(v) for v in (
        "LEEF:2.0", "otel_audit", "otel_audit", _VERSION, r.action, "^"))
    return f"{header}|{body}"


#: ``--format`` name -> formatter.
FORMATS: dict[str, Callable[[ForwardItem], str]] = {
    "json": format_json, "cef": format_cef, "leef": format_leef,
}
