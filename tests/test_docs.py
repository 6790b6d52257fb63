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


def test_demo_script_ends_with_commands_that_exist() -> None:
    """``scripts/demo.sh`` prints what to try next: the CLI by its .venv path, real commands."""
    import shlex

    from typer.testing import CliRunner

    script = (README.parent / "scripts" / "demo.sh").read_text()
    printed = script.split("<<'EOF'", 1)[1].split("\nEOF", 1)[0]
    lines = [line.strip() for line in printed.splitlines()
             if line.strip().startswith(".venv/bin/otel-audit")]
    assert len(lines) >= 5 and "source .venv/bin/activate" in printed
    runner = CliRunner()
    for line in lines:
        words = shlex.split(line.split("  (", 1)[0])[1:]
        words = [w for w in words if w != "TRACE_ID" and not w.startswith("SELECT")]
        if "--help" not in words:
            words.append("--help")
        result = runner.invoke(app, words)
        assert result.exit_code == 0, (line, result.output)
