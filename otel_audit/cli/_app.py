"""The Typer application every command module registers on, shared options and errors.

Errors: every command may simply let a library error (:class:`~otel_audit.errors.AuditError`),
a DuckDB or SQLAlchemy error, an ``OSError`` or a :class:`CliError` propagate. The
application's group turns it into one line on stderr (``error: <message>``) and exit
status 2 (a :class:`CliError` carries its own status). ``--debug`` (or
``OTEL_AUDIT_DEBUG=1``) lets the exception through with its traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ..config import DEFAULT_DATABASE_URL

__all__ = [
    "CliError",
    "DbOption",
    "app",
    "console",
    "describe_error",
    "err_console",
    "fail",
    "is_terminal",
    "resolve_db",
]


class CliError(Exception):
    """An error the CLI reports as one line on stderr, exiting with ``code`` (default 2)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong, without the backend's SQL or traceback."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    if isinstance(exc, CliError):
        return exc.message
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        text = str(exc.orig)  # the driver's own message, not SQLAlchemy's echo of the SQL
    elif isinstance(exc, SQLAlchemyError):
        text = str(exc).split("\n(Background on this error", 1)[0]
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    lines = []
    for line in text.splitlines():
        if line.startswith("LINE "):  # DuckDB's echo of the statement with a caret under it
            break
        if line.strip():
            lines.append(line.strip())
    # one line: DuckDB's hints ("Candidate bindings: ...") follow on the same line
    first = " ".join(lines) if lines else type(exc).__name__
    from ..errors import AuditError

    if isinstance(exc, AuditError | SQLAlchemyError | OSError) or _is_duckdb_error(exc):
        return first
    # not an error we expected: name it, and say how to see where it came from
    return f"{type(exc).__name__}: {first} (run with --debug for the traceback)"


def _is_duckdb_error(exc: BaseException) -> bool:
    duckdb = sys.modules.get("duckdb")  # imported by the analytics commands when used
    return duckdb is not None and isinstance(exc, duckdb.Error)


class AuditGroup(TyperGroup):
    """The ``otel-audit`` group: turns any error of a command into one clear line."""

    def invoke(self, ctx: Any) -> Any:
        """Run the command; report its error as ``error: ...`` unless ``--debug``."""
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # usage errors and explicit exits keep their own message and status
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            code = exc.code if isinstance(exc, CliError) else 2
            raise fail(describe_error(exc), code) from exc


app = typer.Typer(
    name="otel-audit",
    help="otel_audit: a compliance-grade audit trail inside OpenTelemetry.",
    cls=AuditGroup,
    rich_markup_mode="markdown",  # help texts show "[env: ...]" literally, ``x`` as code
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="OTEL_AUDIT_DEBUG",
        help="Show the full traceback of an error instead of one line.")] = False,
) -> None:
    """otel_audit: a compliance-grade audit trail inside OpenTelemetry."""


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
    # the message is text, not markup: "[server]" in a hint or a SQL array must show as is
    err_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def is_terminal() -> bool:
    """Whether stdout is a terminal (tables) or a pipe (plain CSV/JSON)."""
    return sys.stdout.isatty()
