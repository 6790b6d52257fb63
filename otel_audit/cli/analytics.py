"""``otel-audit query``, ``report``, ``export`` and ``trace``: the analytics commands.

Results render as Rich tables on a terminal and as plain CSV (or JSON) when piped, so
``otel-audit report failure_spikes | csvlook`` works without flags.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import duckdb
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..analytics import AuditAnalytics, list_reports, trace_link
from ..analytics.catalog import get_report
from ..errors import AuditError
from ._app import DbOption, app, console, err_console, fail, is_terminal, resolve_db

FormatOption = Annotated[
    str | None,
    typer.Option("--format", "-f", help="table, csv or json [default: table on a terminal, "
                 "csv when piped]"),
]
ArchiveOption = Annotated[
    str | None,
    typer.Option("--archive-dir", help="Parquet archives to include "
                 "[env: OTEL_AUDIT_ARCHIVE_DIR]"),
]
AuditReadsOption = Annotated[
    bool,
    typer.Option("--audit-reads", help="Record this read in the trail (action audit.read)."),
]


@contextmanager
def _analytics(db: str | None, archive_dir: str | None,
               audit_reads: bool = False) -> Iterator[AuditAnalytics]:
    try:
        analytics = AuditAnalytics(resolve_db(db), archive_dir=archive_dir,
                                   audit_reads=audit_reads)
    except AuditError as exc:
        raise fail(str(exc)) from exc
    try:
        yield analytics
    except AuditError as exc:
        raise fail(str(exc)) from exc
    finally:
        analytics.close()


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="One SELECT over the view audit_trails.")],
    db: DbOption = None,
    fmt: FormatOption = None,
    archive_dir: ArchiveOption = None,
    audit_reads: AuditReadsOption = False,
) -> None:
    """Run read-only SQL (DuckDB dialect) over the trail; writes are refused."""
    with _analytics(db, archive_dir, audit_reads) as analytics:
        emit(analytics.sql(sql), _format(fmt, ("table", "csv", "json")), title=None)


@app.command()
def report(
    name: Annotated[str | None, typer.Argument(help="Report name (see --list).")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="Report parameter as k=v (repeatable).")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", "-f", help="table, csv, json or parquet [default: table on a terminal, "
        "csv when piped]")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the reports and exit.")] = False,
    db: DbOption = None,
    archive_dir: ArchiveOption = None,
    audit_reads: AuditReadsOption = False,
) -> None:
    """Run a named compliance report (``--list`` shows them with their controls)."""
    if list_:
        _list_reports()
        return
    if name is None:
        raise fail("give a report name, or --list to see them")
    values: dict[str, str] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise fail(f"--param expects k=v, got {item!r}")
        values[key.strip()] = value
    chosen = _format(fmt, ("table", "csv", "json", "parquet"))
    with _analytics(db, archive_dir, audit_reads) as analytics:
        found = get_report(name)
        bound = found.bind(values)
        if chosen == "parquet":
            if out is None:
                raise fail("--format parquet needs --out FILE")
            analytics.copy_to(found.sql, bound, out, "parquet")
            err_console().print(f"wrote report {name} to {out}")
            return
        relation = analytics.report(name, **values)
        if out is not None:
            with out.open("w", encoding="utf-8", newline="") as fh:
                emit(relation, "json" if chosen == "json" else "csv", title=name, stream=fh)
            err_console().print(f"wrote report {name} to {out}")
        else:
            emit(relation, chosen, title=name)


def _list_reports() -> None:
    reports = list_reports()
    if not is_terminal():
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["name", "description", "parameters", "controls"])
        for r in reports:
            writer.writerow([r.name, r.description, " ".join(p.name for p in r.params),
                             "; ".join(r.controls)])
        return
    table = Table(title="compliance reports", show_lines=True)
    for column in ("name", "description", "parameters", "controls"):
        table.add_column(column)
    for r in reports:
        params = "\n".join(f"{p.name}{'' if p.required else ' (optional)'}" for p in r.params)
        table.add_row(r.name, r.description, params, "\n".join(r.controls))
    console().print(table)


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    since: Annotated[str | None, typer.Option(help="ISO time, inclusive (UTC if no offset).")]
    = None,
    until: Annotated[str | None, typer.Option(help="ISO time, exclusive (UTC if no offset).")]
    = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="parquet, csv or jsonl.")]
    = "parquet",
    db: DbOption = None,
    archive_dir: ArchiveOption = None,
    audit_reads: AuditReadsOption = False,
) -> None:
    """Export the records of a time range (typed columns) to Parquet, CSV or JSON lines."""
    if fmt not in ("parquet", "csv", "jsonl"):
        raise fail(f"--format must be parquet, csv or jsonl; got {fmt!r}")
    try:
        bounds = {"since": _parse_time(since), "until": _parse_time(until)}
    except ValueError as exc:
        raise fail(str(exc)) from exc
    sql = ('SELECT * FROM audit_trails WHERE ($since::TIMESTAMPTZ IS NULL OR "timestamp" >= '
           '$since::TIMESTAMPTZ) AND ($until::TIMESTAMPTZ IS NULL OR "timestamp" < '
           '$until::TIMESTAMPTZ) ORDER BY "timestamp", id')
    with _analytics(db, archive_dir, audit_reads) as analytics:
        total = analytics.sql(f"SELECT count(*) FROM ({sql})", bounds).fetchone()
        rows = int(total[0]) if total else 0
        _copy_with_progress(analytics, sql, bounds, out, fmt, rows)
    err_console().print(f"exported {rows} records to {out} ({fmt})")


def _copy_with_progress(analytics: AuditAnalytics, sql: str, params: dict[str, Any],
                        out: Path, fmt: str, rows: int) -> None:
    """Run the COPY on a worker thread while the main thread draws a progress bar.

    The bar follows DuckDB's own query progress where the source reports it (Parquet,
    DuckDB tables); the sqlite scanner reports none, so there it pulses with the
    elapsed time instead of guessing.
    """
    errors: list[BaseException] = []
    analytics.con.execute("SET enable_progress_bar = true")  # track progress, print nothing
    analytics.con.execute("SET enable_progress_bar_print = false")

    def work() -> None:
        try:
            analytics.copy_to(sql, params, out, fmt)
        except BaseException as exc:  # re-raised on the main thread
            errors.append(exc)

    worker = threading.Thread(target=work, name="otel-audit-export", daemon=True)
    with Progress(TextColumn(f"[bold]exporting {rows:,} records"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                  console=err_console(), transient=True) as bar:
        task = bar.add_task("export", total=None)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            try:
                done = analytics.con.query_progress()
            except duckdb.Error:  # no query running yet or any more
                done = -1
            if done > 0:
                bar.update(task, total=100, completed=done)
        bar.update(task, total=100, completed=100)
    if errors:
        raise errors[0]


@app.command("trace")
def trace_cmd(
    trace_id: Annotated[str, typer.Argument(help="W3C trace ID (32 hex digits).")],
    db: DbOption = None,
    archive_dir: ArchiveOption = None,
    fmt: FormatOption = None,
) -> None:
    """Show a readable timeline of one trace's audit records (and its trace link)."""
    chosen = _format(fmt, ("table", "csv", "json"))
    with _analytics(db, archive_dir) as analytics:
        relation = analytics.report("trace_timeline", trace_id=trace_id.lower())
        if chosen != "table":
            emit(relation, chosen, title=None)
            return
        columns, rows = relation.columns, relation.fetchall()
    out = console()
    link = trace_link(trace_id)
    out.print(f"[bold]trace {trace_id}[/]: {len(rows)} audit record(s)"
              + (f"\n[link={link}]{link}[/link]" if link else ""))
    if not rows:
        return
    start: dt.datetime = rows[0][columns.index("timestamp")]
    table = Table(show_edge=False)
    for name in ("+ms", "time (UTC)", "user", "action", "resource", "ok", "span"):
        table.add_column(name, justify="right" if name == "+ms" else "left")
    for row in rows:
        rec = dict(zip(columns, row, strict=True))
        offset = (rec["timestamp"] - start).total_seconds() * 1000
        user = rec["user_id"] + (f" (as {rec['acting_as']})" if rec["acting_as"] else "")
        resource = f"{rec['resource_type'] or ''}/{rec['resource_id'] or ''}".strip("/")
        ok = "yes" if rec["success"] else f"[red]no[/]: {rec['error_message'] or ''}"
        table.add_row(f"{offset:.1f}", rec["timestamp"].strftime("%Y-%m-%d %H:%M:%S.%f"),
                      user, rec["action"], resource, ok, rec["span_id"] or "")
    out.print(table)


# ------------------------------------------------------------------ rendering


def _format(fmt: str | None, allowed: Sequence[str]) -> str:
    chosen = fmt or ("table" if is_terminal() else "csv")
    if chosen not in allowed:
        raise fail(f"--format must be one of {', '.join(allowed)}; got {chosen!r}")
    return chosen


def _parse_time(raw: str | None) -> dt.datetime | None:
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"not an ISO date/time: {raw!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _plain(value: Any, is_json: bool) -> Any:
    if is_json and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def emit(relation: duckdb.DuckDBPyRelation, fmt: str, *, title: str | None,
         stream: Any = None) -> None:
    """Write ``relation`` as a Rich table, CSV or JSON, adding trace links when configured."""
    columns = list(relation.columns)
    json_cols = {i for i, t in enumerate(relation.types) if str(t) == "JSON"}
    rows = relation.fetchall()
    link_at = columns.index("trace_id") if "trace_id" in columns else None
    with_links = link_at is not None and trace_link("x") is not None
    if with_links:
        columns.append("trace_link")
    out = stream or sys.stdout
    if fmt == "json":
        records = []
        for row in rows:
            rec = {c: _plain(v, i in json_cols) for i, (c, v) in enumerate(zip(columns, row,
                                                                                strict=False))}
            if with_links and link_at is not None:
                rec["trace_link"] = trace_link(row[link_at])
            records.append(rec)
        json.dump(records, out, indent=2, default=str)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            values = [_plain(v, False) for v in row]
            if with_links and link_at is not None:
                values.append(trace_link(row[link_at]))
            writer.writerow(values)
        return
    table = Table(title=title, caption=f"{len(rows)} row(s)")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        cells = ["" if v is None else str(_plain(v, False)) for v in row]
        if with_links and link_at is not None:
            link = trace_link(row[link_at])
            cells.append(f"[link={link}]{link}[/link]" if link else "")
        table.add_row(*cells)
    console().print(table)
