"""Pure helpers of the pages: value diffs, timelines, chart data, link building."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from ..record import AuditRecord

__all__ = ["chain_steps", "chart_data", "diff_values", "page_url", "participants",
           "pretty_json", "safe_trace_url", "timeline"]

_MAX_TEXT = 2000  # what a table cell shows of one value; the raw JSON has everything


def pretty_json(value: Any) -> str:
    """Indented JSON for display (escaping is the template's job)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key in value:
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}[{i}]", out)
    else:
        out[prefix or "(value)"] = value


def diff_values(old: Any, new: Any) -> list[dict[str, Any]]:
    """Every path of ``old``/``new`` with both values and whether it changed."""
    if old is None and new is None:
        return []
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    if old is not None:
        _flatten(old, "", before)
    if new is not None:
        _flatten(new, "", after)
    rows = []
    for path in sorted(set(before) | set(after)):
        a, b = before.get(path, _MISSING), after.get(path, _MISSING)
        kind = ("added" if a is _MISSING else "removed" if b is _MISSING
                else "changed" if a != b else "same")
        rows.append({"path": path, "old": _show(a), "new": _show(b), "kind": kind})
    return rows


class _Missing:
    def __repr__(self) -> str:
        return ""


_MISSING: Any = _Missing()


def _show(value: Any) -> str:
    if value is _MISSING:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           default=str)
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + f"… ({len(text)} chars)"


def chain_steps(chain: Any) -> list[dict[str, str | None]]:
    """The steps of a ``delegation_chain`` for display, in the record's order.

    A ``{"principal": ..., "via": ...}`` entry gives its principal and ``via`` (as text;
    an empty ``via`` is none);
    any other entry (or a chain that is not a list) is shown as its JSON text (``raw``).
    """
    if chain is None:
        return []
    entries = chain if isinstance(chain, list) else [chain]
    steps: list[dict[str, str | None]] = []
    for entry in entries:
        principal = entry.get("principal") if isinstance(entry, Mapping) else None
        if principal is None:
            steps.append({"principal": None, "via": None, "raw": _show(entry)})
            continue
        via = entry.get("via")
        steps.append({"principal": _show(principal),
                      "via": None if via is None or via == "" else _show(via), "raw": None})
    return steps


def participants(record: AuditRecord) -> set[str]:
    """Everyone who took part in ``record`` (four eyes: none of them reviews it): its
    actor, the user it acted for, and every principal of its delegation chain."""
    names = {record.user_id}
    if record.acting_as:
        names.add(record.acting_as)
    chain = record.delegation_chain
    for entry in chain if isinstance(chain, list) else ():
        principal = entry.get("principal") if isinstance(entry, Mapping) else None
        if isinstance(principal, str) and principal:
            names.add(principal)
    return names


def safe_trace_url(template: str | None, trace_id: str | None) -> str | None:
    """The trace viewer link for ``trace_id`` (only http(s) templates)."""
    if not template or not trace_id:
        return None
    if not template.lower().startswith(("http://", "https://")):
        return None
    if not all(c in "0123456789abcdef" for c in trace_id.lower()):
        return None
    return template.replace("{trace_id}", trace_id)


def page_url(path: str, params: Mapping[str, str], **more: str | None) -> str:
    """``path`` with ``params`` and ``more`` (``None`` drops a key) as its query."""
    merged = {k: v for k, v in params.items() if v}
    for key, value in more.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return path + ("?" + urlencode(merged) if merged else "")


def timeline(records: Iterable[AuditRecord], *, days: int = 30,
             now: dt.datetime | None = None) -> dict[str, Any]:
    """Records per UTC day over the last ``days`` days (chart data)."""
    now = now or dt.datetime.now(dt.UTC)
    start = (now - dt.timedelta(days=days - 1)).date()
    counts: Counter[dt.date] = Counter()
    for record in records:
        day = record.timestamp.astimezone(dt.UTC).date()
        if day >= start:
            counts[day] += 1
    xs = [start + dt.timedelta(days=i) for i in range(days)]
    return {"kind": "time", "x": [_epoch(d) for d in xs], "series": [
        {"label": "records", "values": [counts.get(d, 0) for d in xs]}]}


def _epoch(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def chart_data(columns: Sequence[str], types: Sequence[str],
               rows: Sequence[Sequence[Any]]) -> dict[str, Any] | None:
    """Chart data for a report with a time or category axis and numeric columns."""
    if not rows or len(columns) < 2:
        return None
    numeric = [i for i, t in enumerate(types)
               if t.upper().split("(")[0] in _NUMERIC and i > 0]
    if not numeric:
        return None
    axis_type = types[0].upper()
    series = [{"label": columns[i], "values": [_number(r[i]) for r in rows[:200]]}
              for i in numeric[:4]]
    if axis_type.startswith(("TIMESTAMP", "DATE")):
        points = sorted(range(min(len(rows), 200)), key=lambda i: _stamp(rows[i][0]))
        return {"kind": "time", "x": [_stamp(rows[i][0]) for i in points],
                "series": [{"label": s["label"], "values": [s["values"][i] for i in points]}
                           for s in series]}
    return {"kind": "category", "labels": [str(r[0])[:40] for r in rows[:200]],
            "x": list(range(min(len(rows), 200))), "series": series}


_NUMERIC = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL"}


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _stamp(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(value, dt.date):
        return float(_epoch(value))
    return 0.0
