"""``otel-audit demo`` and ``otel-audit migrate``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from ..errors import AuditError
from ..store.migrate import current_revision, head_revision, upgrade
from ..store.schema import audit_trails
from ..store.writer import create_store_engine
from ._app import DbOption, app, console, err_console, fail, resolve_db


@app.command()
def migrate(db: DbOption = None) -> None:
    """Create or upgrade the trail's schema (Alembic) in the store at --db."""
    url = resolve_db(db)
    try:
        engine = create_store_engine(url)
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
    except AuditError as exc:
        raise fail(str(exc)) from exc
    except Exception as exc:
        raise fail(f"migration failed: {exc}") from exc
    state = "already at" if before == after else f"upgraded {before or 'empty'} ->"
    console().print(f"schema {state} revision {after} (head {head_revision()})")
    engine.dispose()


@app.command()
def demo(
    db: DbOption = None,
    records: Annotated[int, typer.Option("--records", "-n", min=1,
                                         help="How many audit records to write.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed (the same seed, the same trail).")] = 42,
    days: Annotated[int, typer.Option(help="Days of activity to simulate.")] = 30,
) -> None:
    """Simulate a multi-user service under tracing and write its audit trail."""
    from ..demo import run_demo
    from ..trail import AuditTrail

    url = resolve_db(db)
    try:
        trail = AuditTrail(url, service_name="demo-gateway", auto_migrate=True)
    except AuditError as exc:
        raise fail(str(exc)) from exc
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
    _summary(url, written, stats.written, stats.failed + stats.dropped)


def _summary(url: str, planned: int, written: int, lost: int) -> None:
    out = console()
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
    out.print(f"\nwrote [bold]{written}[/] of {planned} records "
              f"({lost} not written); the trail now holds [bold]{total}[/] records "
              f"in {url}\n")
    table = Table(title="records by action and outcome")
    table.add_column("action")
    table.add_column("outcome")
    table.add_column("records", justify="right")
    for action, success, count in by_action:
        table.add_row(action, "success" if success else "[red]failure[/]", str(count))
    out.print(table)
    recent = Table(title="latest records and their traces")
    recent.add_column("timestamp (UTC)", no_wrap=True)
    for name in ("user", "action", "resource", "ok"):
        recent.add_column(name, overflow="fold")
    recent.add_column("trace_id", no_wrap=True)
    for ts, user, action, rtype, rid, success, trace_id in samples:
        recent.add_row(str(ts)[:19], user, action, f"{rtype}/{rid}", "yes" if success else "no",
                       trace_id)
    out.print(recent)


#: Settings whose values are secrets: shown as set/unset only.
_SECRET_SETTINGS = frozenset({"hmac_key", "signing_key", "redact_hmac_key"})


@app.command("config")
def show_config(
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="Print the README's table of every setting instead.")] = False,
) -> None:
    """Show the effective settings (environment over defaults) and where each comes from."""
    import os

    from ..config import SETTINGS, resolve_config, settings_table
    from ..errors import ConfigError

    if markdown:
        typer.echo(settings_table())
        return
    try:
        config = resolve_config()
    except ConfigError as exc:
        raise fail(str(exc)) from exc
    table = Table(title="effective otel_audit settings")
    for name in ("setting", "value", "from"):
        table.add_column(name, overflow="fold")
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        from_env = bool(setting.env and os.environ.get(setting.env))
        if setting.name in _SECRET_SETTINGS:
            shown = "(set)" if value else "(unset)"
        elif setting.name == "url":
            from ..config import normalise_database_url

            shown = normalise_database_url(value).render_as_string(hide_password=True)
        else:
            shown = str(value)
        table.add_row(setting.name, shown, setting.env if from_env else "default")
    console().print(table)
