"""Streamed exports of a search: CSV, JSON lines and Parquet, UTC timestamps, capped."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from ..record import AuditRecord
from ..store.schema import RECORD_COLUMNS

__all__ = ["EXPORT_FORMATS", "export_chunks", "record_dict"]

#: format -> (media type, file extension)
EXPORT_FORMATS: dict[str, tuple[str, str]] = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "jsonl": ("application/x-ndjson", "jsonl"),
    "parquet": ("application/vnd.apache.parquet", "parquet"),
}


def record_dict(record: AuditRecord) -> dict[str, Any]:
    """The record as JSON-ready values (timestamp: ISO 8601 UTC)."""
    out: dict[str, Any] = {}
    for name in RECORD_COLUMNS:
        value = getattr(record, name)
        if name == "timestamp":
            value = value.isoformat().replace("+00:00", "Z")
        out[name] = value
    return out


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _csv_chunks(records: Iterable[AuditRecord]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(RECORD_COLUMNS)
    for n, record in enumerate(records, 1):
        row = record_dict(record)
        writer.writerow(["" if v is None else _json(v) if isinstance(v, dict | list) else v
                         for v in row.values()])
        if n % 500 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _jsonl_chunks(records: Iterable[AuditRecord]) -> Iterator[bytes]:
    lines: list[str] = []
    for record in records:
        lines.append(_json(record_dict(record)))
        if len(lines) >= 500:
            yield ("\n".join(lines) + "\n").encode()
            lines = []
    if lines:
        yield ("\n".join(lines) + "\n").encode()


def _parquet_chunks(records: Iterable[AuditRecord]) -> Iterator[bytes]:
    # Parquet is written whole (its footer comes last): JSON lines to a private temporary
    # file, converted by a DuckDB connection of its own that reads only that file
    import duckdb

    with tempfile.TemporaryDirectory(prefix="otel-audit-export-") as tmp:
        source = os.path.join(tmp, "rows.jsonl")
        target = os.path.join(tmp, "rows.parquet")
        with open(source, "wb") as fh:
            for chunk in _jsonl_chunks(records):
                fh.write(chunk)
        columns = ", ".join(f"'{name}': '{_duck_type(name)}'" for name in RECORD_COLUMNS)
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"COPY (SELECT * FROM read_json(?, format = 'newline_delimited', "
                        f"columns = {{{columns}}})) TO '{target.replace(chr(39), chr(39) * 2)}' "
                        "(FORMAT parquet, COMPRESSION zstd)", [source])
        finally:
            con.close()
        with open(target, "rb") as fh:
            while chunk := fh.read(1 << 16):
                yield chunk


def _duck_type(name: str) -> str:
    if name == "timestamp":
        return "TIMESTAMPTZ"
    if name in {"requires_review", "success"}:
        return "BOOLEAN"
    if name == "schema_version":
        return "INTEGER"
    if name in {"old_values", "new_values", "changes", "context"}:
        return "JSON"
    return "VARCHAR"


def export_chunks(records: Iterable[AuditRecord], fmt: str) -> Iterator[bytes]:
    """The bytes of ``records`` exported as ``fmt`` (see :data:`EXPORT_FORMATS`)."""
    if fmt == "csv":
        return _csv_chunks(records)
    if fmt == "jsonl":
        return _jsonl_chunks(records)
    if fmt == "parquet":
        return _parquet_chunks(records)
    raise ValueError(f"unknown export format {fmt!r}")
