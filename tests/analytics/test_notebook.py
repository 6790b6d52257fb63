"""The compliance notebook runs top to bottom on a fresh demo trail, with a real kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from otel_audit import AuditTrail
from otel_audit.demo import run_demo

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "compliance_analysis.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.slow
def test_notebook_executes_against_a_demo_trail(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/demo.db"
    trail = AuditTrail(url, service_name="demo-gateway", auto_migrate=True)
    written = run_demo(trail, 5_000)
    trail.shutdown()
    monkeypatch.setenv("OTEL_AUDIT_DATABASE_URL", url)
    monkeypatch.setenv("OTEL_AUDIT_TRACE_URL", "http://tempo.example/trace/{trace_id}")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # a failing cell raises CellExecutionError, which fails this test
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for o in outputs)
    assert str(written) in text  # the overview counted every demo record
    assert "http://tempo.example/trace/" in text  # the drill-down links to its trace
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # the plots
    warned = [o["text"] for o in outputs if o.get("name") == "stderr" and "Warning" in o["text"]]
    assert warned == []  # e.g. pandas' inplace deprecation reached through DuckDB


def _first_code_cell() -> str:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return next(cell.source for cell in nb.cells if cell.cell_type == "code")


def test_notebook_started_in_its_folder_finds_the_demo_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Jupyter starts the kernel in notebooks/; the demo wrote audit.db at the root."""
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    trail = AuditTrail(f"sqlite:///{root / 'audit.db'}", auto_migrate=True)
    run_demo(trail, 50)
    trail.shutdown()
    monkeypatch.chdir(root / "notebooks")
    namespace: dict[str, object] = {}
    exec(_first_code_cell(), namespace)  # the cell that chooses the trail
    namespace["analytics"].close()  # type: ignore[attr-defined]
    assert namespace["url"] == f"sqlite:///{root.resolve() / 'audit.db'}"
    assert f"trail: {root.resolve() / 'audit.db'}" in capsys.readouterr().out
    assert not (root / "notebooks" / "audit.db").exists()


def test_notebook_without_a_demo_database_writes_it_at_the_root_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    monkeypatch.chdir(root / "notebooks")
    namespace: dict[str, object] = {}
    exec(_first_code_cell(), namespace)
    namespace["analytics"].close()  # type: ignore[attr-defined]
    assert "no demo trail found: wrote 5,000 demo records to" in capsys.readouterr().out
    assert (root / "audit.db").is_file()
    assert not (root / "notebooks" / "audit.db").exists()
