"""``otel-audit ui``: the audit console (web UI and JSON API) over one store."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import CliError, DbOption, app, console, err_console, resolve_db


@app.command()
def ui(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    archive: Annotated[str | None, typer.Option(
        help="Directory of Parquet archives (searches, record pages and reports read them "
             "with the live store) "
             "[env: OTEL_AUDIT_ARCHIVE_DIR].")] = None,
    users: Annotated[str | None, typer.Option(
        envvar="OTEL_AUDIT_CONSOLE_USERS", show_envvar=True,
        help="TOML or JSON file of users (name, role, teams, token_sha256).")] = None,
    saved_searches: Annotated[str | None, typer.Option(
        help="JSON file of the users' saved searches (default: saved-searches.json next "
             "to the users file).")] = None,
    auth_header: Annotated[str | None, typer.Option(
        help="Header a reverse proxy sets to the signed-in user's name (e.g. "
             "X-Forwarded-User); honoured only from --trusted-proxy addresses.")] = None,
    trusted_proxy: Annotated[list[str] | None, typer.Option(
        help="Address of a reverse proxy whose --auth-header is believed "
             "(repeatable; default: loopback).")] = None,
    export_max_rows: Annotated[int | None, typer.Option(
        min=1, help="Most rows one export streams "
                    "[env: OTEL_AUDIT_CONSOLE_EXPORT_MAX_ROWS; default: 100000].")] = None,
    tls_cert: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[str | None, typer.Option(help="TLS private key (PEM).")] = None,
    hash_token: Annotated[bool, typer.Option(
        "--hash-token", help="Print a new random token and the token_sha256 line for the "
                             "users file, then exit.")] = False,
) -> None:
    """Serve the audit console: search, records, review queue, reports, integrity, API.

    Session cookies are signed with OTEL_AUDIT_CONSOLE_SECRET (unset: a random key,
    so sessions end when the console stops).
    """
    if hash_token:
        from ..console.auth import hash_token as make_hash
        from ..console.auth import new_token

        token = new_token()
        out = console()
        out.print(f"token: {token}", highlight=False)
        out.print(f'token_sha256 = "{make_hash(token).removeprefix("sha256:")}"',
                  highlight=False)
        return
    try:
        import uvicorn

        from ..console import create_app
    except ImportError as exc:
        raise CliError(f"{exc}: install the console extra (pip install "
                       "'otel_audit[console]')") from exc
    if not users:
        raise CliError("no users: pass --users FILE or set OTEL_AUDIT_CONSOLE_USERS "
                       "(make a token with: otel-audit ui --hash-token)")
    if bool(tls_cert) != bool(tls_key):
        raise CliError("--tls-cert and --tls-key go together")
    proxies = tuple(trusted_proxy) if trusted_proxy else ("127.0.0.1", "::1")
    application = create_app(resolve_db(db), users_file=users, archive_dir=archive,
                             auth_header=auth_header, trusted_proxies=proxies,
                             export_max_rows=export_max_rows, saved_searches=saved_searches)
    scheme = "https" if tls_cert else "http"
    err_console().print(f"audit console at {scheme}://{host}:{port}/", highlight=False)
    uvicorn.run(application, host=host, port=port, ssl_certfile=tls_cert,
                ssl_keyfile=tls_key, log_level="warning", proxy_headers=False)
