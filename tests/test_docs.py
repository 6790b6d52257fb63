"""The README stays true: its configuration table and command list match the code."""

from __future__ import annotations

import re
from pathlib import Path

from otel_audit.cli import app
from otel_audit.config import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_config_table_matches_settings() -> None:
    text = README.read_text()
    block = re.search(r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->", text,
                      re.S)
    assert block is not None, "README lacks the configuration table markers"
    assert block.group(1).strip() == settings_table().strip(), (
        "README configuration table is stale: regenerate with `python -m otel_audit.config`"
    )


def _commands() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    names = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            names.extend(f"{name} {sub}" for sub in subcommands)
        else:
            names.append(name)
    return names


def test_every_cli_command_is_documented() -> None:
    text = README.read_text()
    missing = [name for name in _commands() if f"otel-audit {name}" not in text]
    assert not missing, f"commands missing from README: {missing}"


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text()
    assert "bash scripts/demo.sh" in text
    assert "bash scripts/test.sh" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
