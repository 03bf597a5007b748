"""`examples/quickstart.ipynb` runs top to bottom in a real Jupyter kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_quickstart_notebook_executes_cleanly() -> None:
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    )
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", "")) for output in outputs
    )
    assert "label=" in text  # the classify cells printed responses
    assert "422" in text  # the bad HTTP request was refused with a validation error
    assert "90/10: {'v1': 90, 'v2': 10}" in text  # the split's weights are exact over 100 calls
    assert "50/50: {'v1': 50, 'v2': 50}" in text
