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
