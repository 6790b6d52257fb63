"""``otel-audit``: a thin command line over the library's API.

Each command module registers its commands on the shared Typer app.
"""

from __future__ import annotations

from . import analytics, core, forward, integrity, proofs, serve, ui
from ._app import app

__all__ = ["app", "main"]

_COMMAND_MODULES = (core, serve, analytics, integrity, ui, forward, proofs)


def main() -> None:
    """Entry point of the ``otel-audit`` command."""
    app()
