"""examples/quickstart.ipynb runs top to bottom (smoke scale) in a fresh kernel."""
from __future__ import annotations

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install 'vitheory[test]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install 'vitheory[test]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install 'vitheory[test]')")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    src = str(ROOT / "src")
    monkeypatch.setenv("PYTHONPATH", src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    # "python3": ipykernel's kernel of this interpreter; the notebook runs in tmp_path and writes only below a
    # temporary folder of its own
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outs if o.get("output_type") == "error"]
    last = nb.cells[-1].outputs[-1]["data"]["text/plain"]
    assert int(last) > 0                                     # the stored trials were read back
