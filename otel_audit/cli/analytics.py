"""``otel-audit query``, ``report``, ``export`` and ``trace``: the analytics commands.

Results render as Rich tables on a terminal and as plain CSV (or JSON) when piped, so
``otel-audit report failure_spikes | csvlook`` works without flags.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TextIO

import duckdb
import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..analytics import AuditAnalytics, list_reports, trace_link
from ..analytics.catalog import Report, get_report
from ..analytics.relation import AuditRelation
from ._app import CliError, DbOption, app, console, err_console, resolve_db
from ._output import Column, output_format, print_rows
from ._store import require_store

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
    """An ``AuditAnalytics`` over an existing store (checked first: DuckDB would create a
    missing SQLite file); its errors reach the application's one-line handler."""
    analytics = AuditAnalytics(require_store(resolve_db(db)), archive_dir=archive_dir,
                               audit_reads=audit_reads)
    try:
        yield analytics
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
    chosen = output_format(fmt)
    with _analytics(db, archive_dir, audit_reads) as analytics:
        emit(analytics.sql(sql), chosen, title=None)


@app.command(context_settings={"help_option_names": []})
def report(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Report name (see --list).")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="Report parameter as k=v (repeatable).")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", "-f", help="table, csv, json or parquet [default: table on a terminal, "
        "csv when piped]")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file.")] = None,
    list_: Annotated[bool, typer.Option(
        "--list", help="List the reports with their parameters (types, defaults) and exit."
    )] = False,
    db: DbOption = None,
    archive_dir: ArchiveOption = None,
    audit_reads: AuditReadsOption = False,
    help_: Annotated[bool, typer.Option(
        "--help", "-h", help="Show this message, or with NAME the report's parameters, "
        "and exit.")] = False,
) -> None:
    """Run a named compliance report (``--list`` shows them with their controls)."""
    if help_:
        # `report NAME --help` documents that report; Click's eager --help could not see NAME
        if name is not None:
            _report_help(get_report(name))
        typer.echo(ctx.get_help())
        return
    if list_:
        _list_reports(output_format(fmt))
        return
    if name is None:
        raise CliError("give a report name, or --list to see them")
    values: dict[str, str] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--param expects k=v, got {item!r}")
        values[key.strip()] = value
    chosen = output_format(fmt, ("table", "csv", "json", "parquet"))
    if chosen == "parquet" and out is None:
        raise CliError("--format parquet needs --out FILE")
    found = get_report(name)
    bound = found.bind(values)  # a bad parameter fails before the store is opened
    with _analytics(db, archive_dir, audit_reads) as analytics:
        if chosen == "parquet":
            assert out is not None
            analytics.copy_to(found.sql, bound, out, "parquet")
            err_console().print(f"wrote report {name} to {out}", highlight=False)
            return
        relation = analytics.report(name, **values)
        if out is not None:
            with out.open("w", encoding="utf-8", newline="") as fh:
                emit(relation, "json" if chosen == "json" else "csv", title=name, stream=fh)
            err_console().print(f"wrote report {name} to {out}", highlight=False)
        else:
            emit(relation, chosen, title=name)


def _param_text(report: Report, sep: str) -> str:
    parts = []
    for p in report.params:
        if p.required:
            parts.append(f"{p.name} {p.type} (required)")
        else:
            parts.append(f"{p.name} {p.type} = {'NULL' if p.default is None else p.default}")
    return sep.join(parts)


def _list_reports(fmt: str) -> None:
    caption = "otel-audit report NAME --help shows one report's parameters"
    if fmt != "table":
        print_rows(["name", "description", "parameters", "controls"],
                   [(r.name, r.description, _param_text(r, "; "), "; ".join(r.controls))
                    for r in list_reports()], fmt=fmt)
        return
    # on a terminal the parameters go under the description: one column fewer leaves the
    # description room to read at 80 columns
    print_rows([Column("name", whole=True), Column("description"),
                Column("controls", whole=True)],
               [(r.name, r.description + "".join(f"\nparam {p}"
                                                 for p in _param_text(r, "\n").splitlines()),
                 "\n".join(r.controls)) for r in list_reports()],
               fmt=fmt, title="compliance reports", caption=caption)


def _report_help(report: Report) -> None:
    out = console()
    out.print(f"[bold]report {report.name}[/]: {report.description}", highlight=False)
    out.print(f"controls: {'; '.join(report.controls)}", highlight=False)
    if not report.params:
        out.print("parameters: none\n")
        return
    grid = Table(title=None, box=None, pad_edge=False, show_header=True)
    grid.add_column("--param", no_wrap=True)
    grid.add_column("type", no_wrap=True)
    grid.add_column("default", no_wrap=True)
    grid.add_column("meaning")
    for p in report.params:
        default = "(required)" if p.required else ("NULL" if p.default is None else p.default)
        grid.add_row(f"{p.name}=...", p.type, str(default), p.doc)
    out.print(grid)
    out.print("")


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
        raise CliError(f"--format must be parquet, csv or jsonl; got {fmt!r}")
    bounds = {"since": _parse_time(since, "--since"), "until": _parse_time(until, "--until")}
    if bounds["since"] and bounds["until"] and bounds["since"] >= bounds["until"]:
        raise CliError(f"--since {since} is not before --until {until}: the range is empty")
    sql = ('SELECT * FROM audit_trails WHERE ($since::TIMESTAMPTZ IS NULL OR "timestamp" >= '
           '$since::TIMESTAMPTZ) AND ($until::TIMESTAMPTZ IS NULL OR "timestamp" < '
           '$until::TIMESTAMPTZ) ORDER BY "timestamp", id')
    with _analytics(db, archive_dir, audit_reads) as analytics:
        total = analytics.sql(f"SELECT count(*) FROM ({sql})", bounds).fetchone()
        rows = int(total[0]) if total else 0
        _copy_with_progress(analytics, sql, bounds, out, fmt, rows)
    err_console().print(f"exported {rows} records to {out} ({fmt})", highlight=False)


def _copy_with_progress(analytics: AuditAnalytics, sql: str, params: dict[str, Any],
                        out: Path, fmt: str, rows: int) -> None:
    """Run the COPY on a worker thread while the main thread shows a spinner.

    DuckDB's ``COPY`` reports no rows written while it runs (and the sqlite scanner no
    progress at all), so instead of a bar stuck at 0% the spinner shows how many records
    are being written and for how long.
    """
    errors: list[BaseException] = []

    def work() -> None:
        try:
            analytics.copy_to(sql, params, out, fmt)
        except BaseException as exc:  # re-raised on the main thread
            errors.append(exc)

    worker = threading.Thread(target=work, name="otel-audit-export", daemon=True)
    with Progress(SpinnerColumn(), TextColumn(f"[bold]writing {rows:,} records to {out}"),
                  TimeElapsedColumn(), console=err_console(), transient=True) as bar:
        bar.add_task("export", total=None)
        worker.start()
        worker.join()
    if errors:
        raise errors[0]


_TRACE_ID = re.compile(r"[0-9a-f]{32}")


@app.command("trace")
def trace_cmd(
    trace_id: Annotated[str, typer.Argument(help="W3C trace ID (32 hex digits).")],
    db: DbOption = None,
    archive_dir: ArchiveOption = None,
    fmt: FormatOption = None,
) -> None:
    """Show a readable timeline of one trace's audit records (and its trace link)."""
    wanted = trace_id.strip().lower()
    if not _TRACE_ID.fullmatch(wanted) or wanted == "0" * 32:
        raise CliError(f"not a W3C trace ID: {trace_id!r} (32 hex digits, not all zero)")
    chosen = output_format(fmt)
    with _analytics(db, archive_dir) as analytics:
        relation = analytics.report("trace_timeline", trace_id=wanted)
        if chosen != "table":
            emit(relation, chosen, title=None, link=trace_link(wanted))
            return
        columns, rows = relation.columns, relation.fetchall()
    out = console()
    link = trace_link(wanted)
    out.print(f"[bold]trace {wanted}[/]: {len(rows)} audit record(s)"
              + (f"\n[link={link}]{link}[/link]" if link else ""), highlight=False)
    if not rows:
        return
    start: dt.datetime = rows[0][columns.index("timestamp")]
    cells = []
    for row in rows:
        rec = dict(zip(columns, row, strict=True))
        offset = (rec["timestamp"] - start).total_seconds() * 1000
        user = rec["user_id"] + (f" (as {rec['acting_as']})" if rec["acting_as"] else "")
        resource = f"{rec['resource_type'] or ''}/{rec['resource_id'] or ''}".strip("/")
        ok = "yes" if rec["success"] else f"no: {rec['error_message'] or ''}"
        cells.append((f"{offset:.1f}", rec["timestamp"].strftime("%H:%M:%S.%f"), user,
                      rec["action"], resource, ok, rec["span_id"] or ""))
    print_rows([Column("+ms", whole=True, justify="right"),
                Column("time (UTC)", whole=True), Column("user"),
                Column("action", whole=True), Column("resource"), Column("ok"),
                Column("span", whole=True)],
               cells, fmt="table", caption=f"{rows[0][columns.index('timestamp')]:%Y-%m-%d}",
               row_style=lambda row: None if row[5] == "yes" else "red")


# ------------------------------------------------------------------ rendering


def _parse_time(raw: str | None, option: str) -> dt.datetime | None:
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise CliError(f"{option}: not an ISO date/time: {raw!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _is_whole(name: str) -> bool:
    """Columns a user copies or types (IDs, names, times, actions) are never wrapped."""
    return (name in {"id", "action", "timestamp", "day", "name", "success", "stream", "seq"}
            or name.endswith(("_id", "_at", "_ip")))


def emit(relation: duckdb.DuckDBPyRelation | AuditRelation, fmt: str, *, title: str | None,
         stream: TextIO | None = None, link: str | None = None) -> None:
    """Write ``relation`` as a Rich table, CSV or JSON (the CLI's table rule).

    A ``trace_link`` column follows ``trace_id`` when ``OTEL_AUDIT_TRACE_URL`` is set (in
    every format); ``link`` adds a constant one (``trace``'s own link). JSON columns stay
    JSON in ``--format json``. Errors DuckDB raises while fetching propagate to the
    application's handler (one line, exit status 2).
    """
    names = list(relation.columns)
    json_cols = {i for i, t in enumerate(relation.types) if str(t) == "JSON"}
    rows = relation.fetchall()
    link_at = names.index("trace_id") if "trace_id" in names else None
    with_links = link is not None or (link_at is not None and trace_link("x") is not None)
    out_rows: list[list[Any]] = []
    for row in rows:
        values = [json.loads(v) if fmt == "json" and i in json_cols and isinstance(v, str)
                  else v for i, v in enumerate(row)]
        if with_links:
            values.append(link if link is not None
                          else trace_link(row[link_at]) if link_at is not None else None)
        out_rows.append(values)
    columns = [Column(n, whole=_is_whole(n)) for n in names]
    if with_links:
        columns.append(Column("trace_link", whole=True))
    print_rows(columns, out_rows, fmt=fmt, title=title, caption=f"{len(rows)} row(s)",
               stream=stream)
