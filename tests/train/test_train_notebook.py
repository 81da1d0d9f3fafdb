"""The quickstart notebook runs top to bottom (code cells executed in order in one namespace)."""

from __future__ import annotations

import json
import os

import pytest

from tests.train_helpers import ROOT

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(monkeypatch, tmp_path):
    if not (ROOT / "bitnet_jax" / "default_model" / "config.json").is_file():
        pytest.fail("bitnet_jax/default_model is missing; the notebook needs the bundled model")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(ROOT)
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    namespace: dict = {"__name__": "__main__"}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}[cell {i}]", "exec"), namespace)
    assert namespace["losses"][-1] < namespace["losses"][0]
    assert set(namespace["values"].tolist()) <= {-1, 0, 1}
