"""The Typer application every command module registers on, and shared options."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.console import Console

from ..config import DEFAULT_DATABASE_URL

app = typer.Typer(
    name="otel-audit",
    help="otel_audit: a compliance-grade audit trail inside OpenTelemetry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: ``--db URL`` (falls back to OTEL_AUDIT_DATABASE_URL, then the SQLite default).
DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL of the store "
                 "[env: OTEL_AUDIT_DATABASE_URL; default: sqlite:///audit.db]"),
]


def resolve_db(db: str | None) -> str:
    """Return ``db``, else ``OTEL_AUDIT_DATABASE_URL``, else the SQLite default."""
    return db or os.environ.get("OTEL_AUDIT_DATABASE_URL") or DEFAULT_DATABASE_URL


def console() -> Console:
    """Console for human output (stdout).

    Messages are never hard-wrapped (``soft_wrap``): a long path must not split a
    line that scripts read, such as the public key ``checkpoint --new-key`` prints.
    """
    return Console(soft_wrap=True)


def err_console() -> Console:
    """Console for progress and errors (stderr), so stdout stays machine-readable."""
    return Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` to stderr and return the exit to raise."""
    err_console().print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def is_terminal() -> bool:
    """Whether stdout is a terminal (tables) or a pipe (plain CSV/JSON)."""
    return sys.stdout.isatty()
