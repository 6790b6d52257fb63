"""``otel-audit serve``: the OTLP/HTTP logs receiver."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal, get_args

import typer

from ..errors import AuditError, ConfigError
from ._app import DbOption, app, err_console, fail, resolve_db

#: Modes a request may be acknowledged in: ``async`` reaches no storage before 200
#: (a test keeps this equal to otel_audit.config.MODES without ``async``).
AckMode = Literal["durable", "sync"]
ACK_MODES: tuple[str, ...] = get_args(AckMode)

# Defaults of otel_audit.server (not imported here: the server extra may be missing;
# tests/server/test_cli_serve.py keeps them equal).
MAX_BODY_BYTES = 16 * 1024 * 1024
BODY_TIMEOUT = 30.0


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str, typer.Option(
        help="Address to listen on. Anything but a loopback address needs a token "
             "(or --insecure).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 4318,
    token: Annotated[str | None, typer.Option(
        envvar="OTEL_AUDIT_SERVER_TOKEN", show_envvar=True,
        help="Bearer token clients must send (prefer the environment variable or "
             "--token-file: a command-line value is visible in the process list).")] = None,
    token_file: Annotated[str | None, typer.Option(
        help="File holding the bearer token.")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Listen on a non-loopback address without a token (only when "
                           "something in front authenticates clients).")] = False,
    tls_cert: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[str | None, typer.Option(help="TLS private key (PEM).")] = None,
    max_body_bytes: Annotated[int, typer.Option(
        min=1024, help="Largest request body, compressed and after decompression (413 "
                       "above it, which a Collector drops: keep its requests smaller)."
    )] = MAX_BODY_BYTES,
    body_timeout: Annotated[float, typer.Option(
        min=0.001, help="Seconds a client has to send its whole body; later, 503 + "
                        "Retry-After (the sender retries).")] = BODY_TIMEOUT,
    max_inflight: Annotated[int, typer.Option(
        min=1, help="Requests decoded and written at once; more get 503 + Retry-After."
    )] = 8,
    ack_mode: Annotated[AckMode | None, typer.Option(
        help="When to answer 200: `durable` (in the local journal; the default when "
             "available) or `sync` (committed to the store). The floor: mode rules "
             "only raise a record to `sync`.")] = None,
    mode_by_classification: Annotated[str | None, typer.Option(
        envvar="OTEL_AUDIT_MODE_BY_CLASSIFICATION", show_envvar=True,
        help="Per-record rules, e.g. `restricted=sync`: a request holding such a record "
             "is answered 200 only once it is committed (503 if it cannot be).")] = None,
    mode_by_action: Annotated[str | None, typer.Option(
        envvar="OTEL_AUDIT_MODE_BY_ACTION", show_envvar=True,
        help="Per-record rules by action, e.g. `DELETE=sync` (`NAME=MODE,...`).")] = None,
) -> None:
    """Receive OTLP/HTTP logs at POST /v1/logs and store the audit records (GET /healthz)."""
    try:
        from ..server import (
            IngestApp,
            build_server,
            check_exposure,
            check_tls,
            default_ack_mode,
            is_loopback,
            resolve_token,
        )
    except ImportError as exc:
        raise fail(f"{exc}: install the server extra (pip install 'otel_audit[server]')") from exc
    from ..config import SETTINGS
    from ..trail import AuditTrail

    url = resolve_db(db)
    try:
        secret = resolve_token(token, token_file)
        # refuse what cannot work before the store is opened or a port is taken
        check_exposure(host, secret, insecure=insecure)
        check_tls(tls_cert, tls_key)
        mode: str = ack_mode or default_ack_mode()
        # parsed as the trail parses its environment (NAME=MODE,...), checked by the trail
        parse = {setting.name: setting.parse for setting in SETTINGS}
        rules: dict[str, Any] = {}
        for name, raw in (("mode_by_classification", mode_by_classification),
                          ("mode_by_action", mode_by_action)):
            if raw:
                try:
                    rules[name] = parse[name](raw)
                except ValueError as exc:
                    raise ConfigError(f"--{name.replace('_', '-')} {raw!r}: {exc}") from exc
        trail = AuditTrail(url, mode=mode, **rules)
        try:
            trail.writer.ensure_schema()  # fail now rather than 503 every request
            ingest = IngestApp(trail, token=secret, max_body_bytes=max_body_bytes,
                               body_timeout=body_timeout, max_inflight=max_inflight,
                               ack_mode=mode, close_trail=True)
            server = build_server(ingest, host=host, port=port, tls_cert=tls_cert,
                                  tls_key=tls_key)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                trail.shutdown()
            raise
    except (AuditError, ValueError) as exc:
        raise fail(str(exc)) from exc
    out = err_console()
    scheme = "https" if tls_cert else "http"
    out.print(
        f"receiving OTLP logs at {scheme}://{host}:{port}/v1/logs -> "
        f"{trail.writer.url.render_as_string(hide_password=True)} "
        f"(ack after {mode}{_sync_rules(trail.config)}; bodies up to {max_body_bytes} "
        f"bytes within {body_timeout:g}s)",
        highlight=False,
    )
    # one line that cannot be missed: whether anyone may write to this trail
    if secret:
        out.print("authentication: bearer token required", highlight=False)
    elif is_loopback(host):
        out.print("[bold yellow]authentication: DISABLED[/] (no token; listening on "
                  "loopback only)", highlight=False)
    else:
        out.print(f"[bold red]WARNING: authentication DISABLED on {host} (--insecure): "
                  f"any client that reaches this port can write audit records[/]",
                  highlight=False)
    server.run()


def _sync_rules(config: Any) -> str:
    """``", after commit for classification restricted"``: the rules that hold a 200."""
    parts = [f"{what} {name}" for what, rules in (
        ("classification", config.mode_by_classification), ("action", config.mode_by_action))
        for name, rule in (rules or {}).items() if rule == "sync"]
    return f", after commit for {', '.join(parts)}" if parts else ""
