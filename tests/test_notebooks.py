"""Every demo notebook at the repository root executes without error (quick mode) and is
committed executed (full mode, in order, with its figures)."""
import glob
import os

import nbformat
import pytest

from tests import nbrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "*.ipynb")))


def test_demo_notebooks_exist():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"Sanity Check.ipynb", "Keras_demo.ipynb", "Registration.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes(path, tmp_path, monkeypatch):
    # Quick mode: notebooks that read SPATIAL_DEMO_QUICK (the kernel inherits the
    # environment) train briefly; ./run.sh demos runs and commits the full version.
    monkeypatch.setenv("SPATIAL_DEMO_QUICK", "1")
    nb, _ = nbrun.execute(path, out_path=str(tmp_path / "out.ipynb"))
    errors = [o for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_committed_executed(path):
    # A committed notebook must render for a reader: run top to bottom in one
    # kernel (./run.sh demos), in full mode, with its outputs and figures.
    committed = nbformat.read(path, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    name = os.path.basename(path)
    assert code and [c.get("execution_count") for c in code] == list(range(1, len(code) + 1)), \
        f"{name} is not committed executed in order (run ./run.sh demos)"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{name} has an error output"
    figures = ("image/png", "image/jpeg")   # Sanity Check's photographs are JPEG
    assert any(f in o.get("data", {}) for o in outputs for f in figures), f"{name} has no figures"
    assert not any("SPATIAL_DEMO_QUICK=1" in o.get("text", "") for o in outputs), \
        f"{name} was committed from a quick-mode run (run ./run.sh demos)"
