"""Every ```python block of the README runs as written, on its own.

Each block runs in a fresh namespace (so it carries its own imports), in an empty
temporary directory, with ``OTEL_AUDIT_DATABASE_URL`` naming a temporary SQLite trail
that already holds a small demo (for the blocks that read). A block that needs a real
external service may be preceded by ``<!-- snippet: skip REASON -->``.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_audit import AuditTrail, set_trail
from otel_audit.demo import run_demo

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(
    r"(?:<!-- snippet: skip (?P<reason>[^>]*?) -->\n)?```python\n(?P<code>.*?)\n```", re.S)
#: what a block does when it writes audit records
_WRITES = re.compile(r"\.record\(|\.log_\w+\(|extra=\{\"audit\"")
_SEEDED = 300


def _blocks() -> list[object]:
    text = README.read_text(encoding="utf-8")
    params = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        params.append(pytest.param(match.group("code"), match.group("reason"),
                                   id=f"README.md:{line}"))
    return params


def _audit_rows(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*.db"):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit_trails'").fetchone():
                total += con.execute("SELECT count(*) FROM audit_trails").fetchone()[0]
        finally:
            con.close()
    return total


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory, a seeded default trail, and the global state restored."""
    url = f"sqlite:///{tmp_path}/env.db"
    seed = AuditTrail(url, auto_migrate=True, service_name="demo-gateway")
    run_demo(seed, _SEEDED)
    seed.shutdown()
    monkeypatch.setenv("OTEL_AUDIT_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    previous = set_trail(None)
    yield tmp_path
    default = set_trail(previous)
    if default is not None:
        default.shutdown()
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_the_readme_has_python_blocks() -> None:
    assert len(_blocks()) >= 8


@pytest.mark.parametrize(("code", "skip"), _blocks())
def test_readme_block_runs(code: str, skip: str | None, sandbox: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    if skip:
        pytest.skip(skip)
    # a real module: SQLAlchemy resolves a mapped class's annotations through it
    module = types.ModuleType("readme_snippet")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "README.md", "exec"), module.__dict__)  # an error fails the test
    for value in vars(module).values():  # flush what the block recorded
        if isinstance(value, AuditTrail):
            value.shutdown()
    default = set_trail(None)
    if default is not None:
        default.shutdown()
    if _WRITES.search(code) and "capture_audit" not in code:  # captured: in memory
        assert _audit_rows(sandbox) > _SEEDED, "the block recorded nothing"
