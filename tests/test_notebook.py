"""examples/quickstart.ipynb runs from top to bottom in a fresh kernel, on generated data, within 60 s,
so it can never go stale; and it is stored without outputs."""

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra (nbformat, nbclient, ipykernel) is not installed")
nbclient = pytest.importorskip("nbclient", reason="the test extra (nbformat, nbclient, ipykernel) is not installed")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
BUDGET_S = 60


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_the_notebook_runs_within_a_minute(data_dir_for_processes, tmp_path, monkeypatch):
    monkeypatch.setenv("DLCLASSICS_DATA", str(data_dir_for_processes))  # the kernel reads the generated data
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=BUDGET_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    print(f"the notebook ran in {seconds:.1f} s")
    assert seconds < BUDGET_S, f"the notebook took {seconds:.0f} s"
    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert errors == []
    shown = [output for cell in notebook.cells for output in cell.get("outputs", [])
             if output.output_type == "execute_result" and "text/html" in output.data]
    assert any("FGSM" in output.data["text/html"] and "data:image/png;base64," in output.data["text/html"]
               for output in shown)
    assert all(len(list((tmp_path / "runs" / experiment).iterdir())) == 1 for experiment in ("fashion-mlp", "fgsm"))
