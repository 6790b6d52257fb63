"""``otel-audit demo`` and ``otel-audit migrate``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from ..config import normalise_database_url
from ..store.migrate import current_revision, head_revision, upgrade
from ..store.schema import audit_trails
from ..store.writer import create_store_engine
from ._app import CliError, DbOption, app, console, err_console, resolve_db
from ._output import Column, output_format, print_rows
from ._store import require_store

FormatOption = Annotated[
    str | None,
    typer.Option("--format", "-f", help="table, csv or json [default: table on a terminal, "
                 "csv when piped]"),
]


@app.command()
def migrate(db: DbOption = None) -> None:
    """Create or upgrade the trail's schema (Alembic) in the store at --db."""
    url = resolve_db(db)
    engine = create_store_engine(url)
    try:
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
    finally:
        engine.dispose()
    state = "already at" if before == after else f"upgraded {before or 'empty'} ->"
    console().print(f"schema {state} revision {after} (head {head_revision()})")


@app.command()
def demo(
    db: DbOption = None,
    records: Annotated[int, typer.Option("--records", "-n", min=1,
                                         help="How many audit records to write.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed (the same seed, the same trail).")] = 42,
    days: Annotated[int, typer.Option(help="Days of activity to simulate.")] = 30,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start from an empty SQLite file (removes the existing one) instead "
        "of adding to the trail already there.")] = False,
    fmt: FormatOption = None,
) -> None:
    """Simulate a multi-user service under tracing and write its audit trail."""
    from ..demo import run_demo
    from ..trail import AuditTrail

    url = resolve_db(db)
    chosen = output_format(fmt)
    if fresh:
        _remove_sqlite_store(url)
    shown = normalise_database_url(url).render_as_string(hide_password=True)
    existing = _existing_records(url)
    if existing:
        err_console().print(f"{shown} already holds {existing:,} records: adding {records:,} "
                            "more (--fresh starts from an empty file)", highlight=False)
    trail = AuditTrail(url, service_name="demo-gateway", auto_migrate=True)
    with Progress(TextColumn("[bold]writing audit records"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console(), transient=False) as bar:
        task = bar.add_task("demo", total=records)
        written = run_demo(trail, records, seed=seed, days=days,
                           progress=lambda n: bar.advance(task, n))
        bar.update(task, description="flushing")
        trail.flush(120)
        bar.update(task, completed=written, total=written)
    stats = trail.stats()
    trail.shutdown()
    _summary(url, written, stats.written, stats.failed + stats.dropped, chosen)


def _remove_sqlite_store(url: str) -> None:
    parsed = normalise_database_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:"):
        raise CliError("--fresh removes an SQLite file only; empty other stores yourself")
    for suffix in ("", "-wal", "-shm"):
        Path(database + suffix).unlink(missing_ok=True)


def _existing_records(url: str) -> int:
    """Records already in the store at ``url`` (0 when it or its table does not exist yet)."""
    try:
        require_store(url)
    except CliError:
        return 0  # nothing there yet: the demo creates it
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(audit_trails)) or 0)
    finally:
        engine.dispose()


def _summary(url: str, planned: int, written: int, lost: int, fmt: str) -> None:
    engine = create_store_engine(url)
    t = audit_trails.c
    with engine.connect() as conn:
        by_action = conn.execute(
            select(t.action, t.success, func.count()).group_by(t.action, t.success)
            .order_by(t.action, t.success.desc())
        ).all()
        total = conn.scalar(select(func.count()).select_from(audit_trails))
        samples = conn.execute(
            select(t.timestamp, t.user_id, t.action, t.resource_type, t.resource_id,
                   t.success, t.trace_id)
            .where(t.trace_id.is_not(None)).order_by(t.timestamp.desc()).limit(5)
        ).all()
    engine.dispose()
    # the sentence goes to stderr when piped, so stdout stays CSV/JSON
    (console() if fmt == "table" else err_console()).print(
        f"\nwrote [bold]{written}[/] of {planned} records ({lost} not written); the trail "
        f"now holds [bold]{total}[/] records in "
        f"{normalise_database_url(url).render_as_string(hide_password=True)}\n",
        highlight=False)
    print_rows([Column("action", whole=True), Column("outcome", whole=True),
                Column("records", justify="right", whole=True)],
               [(action, "success" if success else "failure", count)
                for action, success, count in by_action],
               fmt=fmt, title="records by action and outcome",
               row_style=lambda row: None if row[1] == "success" else "red")
    if fmt == "csv":
        sys.stdout.write("\n")  # two CSV tables: a blank line between them
    print_rows([Column("timestamp", "time (UTC)", whole=True),
                Column("user_id", "user", whole=True), Column("action", whole=True),
                Column("resource"), Column("success", "ok"),
                Column("trace_id", whole=True)],
               [(str(ts)[:19], user, action, f"{rtype}/{rid}", bool(success), trace_id)
                for ts, user, action, rtype, rid, success, trace_id in samples],
               fmt=fmt, title="latest records and their traces",
               caption="otel-audit trace TRACE_ID shows every record of one request",
               row_style=lambda row: None if row[4] else "red")


#: Settings whose values are secrets: shown as set/unset only.
_SECRET_SETTINGS = frozenset({"hmac_key", "signing_key", "redact_hmac_key", "console_secret"})


@app.command("config")
def show_config(
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="Print the README's table of every setting instead.")] = False,
    fmt: FormatOption = None,
) -> None:
    """Show the effective settings (environment over defaults) and where each comes from."""
    from ..config import SETTINGS, resolve_config, settings_table

    if markdown:
        typer.echo(settings_table())
        return
    chosen = output_format(fmt)
    config = resolve_config()
    rows = []
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        from_env = bool(setting.env and os.environ.get(setting.env))
        if setting.name in _SECRET_SETTINGS:
            shown = "(set)" if value else "(unset)"
        elif setting.name == "url":
            shown = normalise_database_url(value).render_as_string(hide_password=True)
        else:
            shown = str(value)
        rows.append((setting.name, shown, setting.env if from_env else "default"))
    print_rows([Column("setting", whole=True), Column("value"), Column("from", whole=True)],
               rows, fmt=chosen, title="effective otel_audit settings")
