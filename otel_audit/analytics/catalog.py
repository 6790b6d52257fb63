"""The compliance report pack: SQL files in ``reports/`` with a metadata header.

Each file starts with comment lines::

    -- name: failure_spikes
    -- description: Days on which a user failed far more often than usual.
    -- controls: PCI DSS 10.2.1.4; SOC 2 CC7.2; NIST 800-53 AU-6
    -- param: min_failures INTEGER = 3 | Fewest failures in a day worth reporting

and is plain DuckDB SQL over the view ``audit_trails`` using ``$name`` parameters, so a
report can be read, reviewed and run by hand. Parameters without ``=`` are required;
``= NULL`` means "no bound".
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import QueryError

__all__ = ["Report", "ReportParam", "get_report", "list_reports"]

def _timestamp(raw: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(raw)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


_CONVERTERS: dict[str, Any] = {
    "VARCHAR": str,
    "INTEGER": int,
    "DOUBLE": float,
    "BOOLEAN": lambda raw: raw.strip().lower() in {"1", "true", "yes", "on"},
    "TIMESTAMPTZ": _timestamp,
}


_HEADER_KEYS = frozenset({"name", "description", "controls", "param"})


@dataclass(frozen=True, slots=True)
class ReportParam:
    """One parameter of a report: name, DuckDB type, default (``None`` = NULL) and meaning."""

    name: str
    type: str
    required: bool
    default: Any
    doc: str

    def convert(self, value: Any) -> Any:
        """Convert a command-line string to this parameter's Python type."""
        if value is None or not isinstance(value, str):
            return value
        try:
            return _CONVERTERS[self.type](value)
        except ValueError as exc:
            raise QueryError(f"parameter {self.name}: expected {self.type}, got {value!r}") from exc


@dataclass(frozen=True, slots=True)
class Report:
    """A named report: its SQL and the metadata from its header."""

    name: str
    description: str
    controls: tuple[str, ...]
    params: tuple[ReportParam, ...]
    sql: str

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return the bound parameters: ``values`` converted, defaults filled in."""
        known = {p.name: p for p in self.params}
        unknown = set(values) - set(known)
        if unknown:
            raise QueryError(f"report {self.name} has no parameter(s) "
                             f"{', '.join(sorted(unknown))}; it takes: "
                             f"{', '.join(known) or 'none'}")
        bound: dict[str, Any] = {}
        for param in self.params:
            if param.name in values:
                bound[param.name] = param.convert(values[param.name])
            elif param.required:
                raise QueryError(f"report {self.name} needs --param {param.name}=...")
            else:
                bound[param.name] = param.convert(param.default)
        return bound


def _parse(text: str, source: str) -> Report:
    meta: dict[str, str] = {}
    params: list[ReportParam] = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        key, sep, value = line[2:].strip().partition(":")
        if not sep or key.strip() not in _HEADER_KEYS:  # other comments explain the SQL
            continue
        key, value = key.strip(), value.strip()
        if key == "param":
            spec, _, doc = value.partition("|")
            head, eq, default = spec.partition("=")
            pname, ptype = head.split()
            raw_default = default.strip()
            params.append(ReportParam(
                name=pname, type=ptype.upper(), required=not eq,
                default=None if raw_default in {"", "NULL"} else raw_default, doc=doc.strip()))
        else:
            meta[key] = value
    for key in ("name", "description", "controls"):
        if key not in meta:
            raise QueryError(f"report {source} lacks the '-- {key}:' header")
    controls = tuple(c.strip() for c in meta["controls"].split(";") if c.strip())
    return Report(meta["name"], meta["description"], controls, tuple(params), text)


@functools.cache
def _load() -> dict[str, Report]:
    reports: dict[str, Report] = {}
    folder = importlib.resources.files(__package__ or "otel_audit.analytics") / "reports"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            report = _parse(entry.read_text(encoding="utf-8"), entry.name)
            reports[report.name] = report
    return reports


def list_reports() -> list[Report]:
    """Every report of the pack, by name."""
    return list(_load().values())


def get_report(name: str) -> Report:
    """The report called ``name``; :class:`QueryError` lists the known names otherwise."""
    try:
        return _load()[name]
    except KeyError:
        raise QueryError(f"no report named {name!r}; known: {', '.join(_load())}") from None
