"""Execute the notebooks in place, so they are stored with their outputs (run after changing one):

    .venv/bin/python scripts/run_notebooks.py

The test suite executes them again in a fresh kernel (tests/test_notebooks.py) and checks that
the stored copies were executed and use only the public API."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent.parent / "notebooks"

for path in sorted(HERE.glob("*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute()
    for cell in nb.cells:  # no per-run noise in the stored file
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, path)
    print("executed", path.name)
