"""``otel-audit forward``: send the committed trail to a SIEM or an OTLP backend."""

from __future__ import annotations

import datetime as dt
import logging
import signal
from typing import Annotated, Any

import typer

from ._app import CliError, DbOption, app, err_console, resolve_db
from ._output import Column, output_format, print_rows
from ._store import open_existing_store


def _headers(values: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--header {value!r}: expected NAME=VALUE")
        headers[name.strip()] = rest
    return headers


def _since(value: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise CliError(f"--since {value!r}: expected an ISO 8601 time") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _print_status(engine: Any, fmt: str | None) -> None:
    from ..forward.status import health

    rows = [(h.destination, h.lag_records, round(h.lag_seconds, 1), h.last_success,
             h.last_error_at, h.last_error, h.rejected, h.holder) for h in health(engine)]
    print_rows([Column("destination", whole=True), "lag_records", "lag_seconds",
                "last_success", "last_error_at", "last_error", "rejected", "holder"],
               rows, fmt=output_format(fmt))


@app.command()
def forward(
    db: DbOption = None,
    to: Annotated[str | None, typer.Option(
        "--to", help="Destination: otlp+http(s)://host:port, syslog+tcp://host:port, "
                     "syslog+tls://host:port[?ca=FILE], file://path.jsonl[?max_bytes=N"
                     "&backups=K].")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="Message body of syslog and file destinations: json (default), "
                         "cef or leef; with --status: table, csv or json.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Name of the destination (its cursors and field policy); default: the URL "
             "without credentials or query.")] = None,
    header: Annotated[list[str] | None, typer.Option(
        "--header", help="HTTP header NAME=VALUE for OTLP (repeatable; also "
                         "OTEL_EXPORTER_OTLP_HEADERS).")] = None,
    config: Annotated[str | None, typer.Option(
        help="TOML file with field policies per destination ([destinations.NAME] drop, "
             "mask, hash).")] = None,
    from_start: Annotated[bool, typer.Option(
        "--from-start", help="Send the whole trail again (reset this destination's "
                             "cursors).")] = False,
    since: Annotated[str | None, typer.Option(
        help="Streams without a cursor start at their first record at or after this "
             "ISO 8601 time.")] = None,
    once: Annotated[bool, typer.Option(
        "--once", help="Forward what is committed now and exit 0.")] = False,
    status: Annotated[bool, typer.Option(
        "--status", help="Print each destination's lag, last success and last error.")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Records per send.")] = 500,
    parallel: Annotated[int, typer.Option(
        min=1, help="Batches of one stream in flight at once (OTLP only; the cursor moves "
                    "once all are acknowledged; they may arrive in any order between "
                    "them).")] = 1,
    poll_interval: Annotated[float, typer.Option(
        min=0.01, help="Seconds between looks at the store when caught up.")] = 1.0,
    gap_grace: Annotated[float, typer.Option(
        min=0, help="Seconds a missing chain position may stay missing (a batch waiting "
                    "in a spool) before it is skipped and recorded as a reject.")] = 600.0,
    lease: Annotated[float, typer.Option(
        min=1, help="Seconds of the destination's lease (a second forwarder waits).")
    ] = 30.0,
    retry_for: Annotated[float | None, typer.Option(
        help="Give up (exit 2) after this many seconds without an acknowledgement "
             "[default: retry forever].")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per send.")] = 30.0,
) -> None:
    """Forward the committed trail to a destination, at least once, in order per stream."""
    url = resolve_db(db)
    engine = open_existing_store(url)
    try:
        from sqlalchemy import inspect

        from ..store.schema import audit_forward_cursors

        if not inspect(engine).has_table(audit_forward_cursors.name):
            raise CliError(f"the store has no {audit_forward_cursors.name} table: run "
                           f"`otel-audit migrate --db URL`")
        if status:
            _print_status(engine, fmt)
            return
        if not to:
            raise CliError("--to DEST is required (or --status)")
        if from_start and since:
            raise CliError("--from-start and --since exclude each other")
        _run(engine, to, fmt=fmt or "json", name=name, headers=_headers(header or []),
             config=config,
             from_start=from_start, since=_since(since) if since else None, once=once,
             batch_size=batch_size, parallel=parallel, poll_interval=poll_interval,
             gap_grace=gap_grace, lease=lease, retry_for=retry_for, timeout=timeout)
    finally:
        engine.dispose()


def _run(engine: Any, to: str, *, fmt: str, name: str | None, headers: dict[str, str],
         config: str | None, from_start: bool, since: dt.datetime | None, once: bool,
         batch_size: int, parallel: int, poll_interval: float, gap_grace: float, lease: float,
         retry_for: float | None, timeout: float) -> None:
    try:
        from ..forward import Forwarder, load_policies, parse_destination
    except ImportError as exc:  # OTLP encoding needs opentelemetry-proto
        raise CliError(f"{exc}: install the forward extra (pip install "
                       f"'otel_audit[forward]')") from exc
    from ..forward.policy import FieldPolicy

    destination = parse_destination(to, fmt=fmt, headers=headers, name=name, timeout=timeout)
    policies = load_policies(config) if config else {}
    policy = policies.get(destination.name, FieldPolicy())
    if config and destination.name not in policies:
        err_console().print(f"note: {config} has no [destinations.\"{destination.name}\"] "
                            f"table: fields are sent as stored", highlight=False)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    forwarder = Forwarder(engine, destination, policy=policy, batch_size=batch_size,
                          parallel=parallel, poll_interval=poll_interval, gap_grace=gap_grace,
                          lease_seconds=lease, retry_for=retry_for)
    # SIGTERM: finish the batch in flight, move its cursor, exit 0
    previous = signal.signal(signal.SIGTERM, lambda *_: forwarder.stop())
    try:
        forwarder.start_from(from_start=from_start, since=since)
        err_console().print(f"forwarding {engine.url.render_as_string(hide_password=True)} "
                            f"-> {destination.name}" + (" (once)" if once else ""),
                            highlight=False)
        summary = forwarder.run(once=once)
    except KeyboardInterrupt:
        forwarder.stop()
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        destination.close()
    gaps = ", ".join(f"{s} at {q}" for s, q in summary.gaps.items())
    err_console().print(f"sent {summary.sent} records in {summary.batches} batches, "
                        f"{summary.rejected} rejected, {summary.retries} retries"
                        + (f"; waiting at gaps: {gaps}" if gaps else ""), highlight=False)
