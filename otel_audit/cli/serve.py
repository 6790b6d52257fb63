"""``otel-audit serve``: the OTLP/HTTP logs receiver."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import AuditError
from ._app import DbOption, app, err_console, fail, resolve_db


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 4318,
    token: Annotated[str | None, typer.Option(
        envvar="OTEL_AUDIT_SERVER_TOKEN", show_envvar=True,
        help="Bearer token clients must send (prefer the environment variable or "
             "--token-file: a command-line value is visible in the process list).")] = None,
    token_file: Annotated[str | None, typer.Option(
        help="File holding the bearer token.")] = None,
    tls_cert: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[str | None, typer.Option(help="TLS private key (PEM).")] = None,
    max_body_bytes: Annotated[int, typer.Option(
        min=1024, help="Largest request body, compressed or not (413 above).")] = 16 * 1024 * 1024,
    max_inflight: Annotated[int, typer.Option(
        min=1, help="Requests written at once; more get 503 + Retry-After.")] = 8,
    ack_mode: Annotated[str | None, typer.Option(
        help="When to answer 200: `durable` (in the local journal; the default when "
             "available) or `sync` (committed to the store).")] = None,
) -> None:
    """Receive OTLP/HTTP logs at POST /v1/logs and store the audit records (GET /healthz)."""
    try:
        from ..server import IngestApp, build_server, default_ack_mode, resolve_token
    except ImportError as exc:
        raise fail(f"{exc}: install the server extra (pip install 'otel_audit[server]')") from exc
    from ..trail import AuditTrail

    url = resolve_db(db)
    try:
        secret = resolve_token(token, token_file)
        ack_mode = ack_mode or default_ack_mode()
        trail = AuditTrail(url, mode=ack_mode)
        trail.writer.ensure_schema()  # fail now rather than 503 every request
        ingest = IngestApp(trail, token=secret, max_body_bytes=max_body_bytes,
                           max_inflight=max_inflight, ack_mode=ack_mode, close_trail=True)
        server = build_server(ingest, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key)
    except (AuditError, ValueError) as exc:
        raise fail(str(exc)) from exc
    scheme = "https" if tls_cert else "http"
    err_console().print(
        f"receiving OTLP logs at {scheme}://{host}:{port}/v1/logs -> "
        f"{trail.writer.url.render_as_string(hide_password=True)} "
        f"(ack after {ack_mode}; token {'required' if secret else 'not required'})",
        highlight=False,
    )
    server.run()
