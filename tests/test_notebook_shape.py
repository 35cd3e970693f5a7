"""Every notebook opens in Colab with the same install cell first."""

from __future__ import annotations

import os

import nbformat
import pytest

from tests.helpers import load_launch_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tool = load_launch_module("notebooks")


@pytest.mark.parametrize("path", tool.notebook_paths(), ids=os.path.basename)
def test_first_code_cell_is_the_colab_install_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert tool.first_code_cell(nb).source == tool.COLAB_CELL, (
        f"{path}: run `python launch/notebooks.py --first-cell`"
    )


@pytest.mark.parametrize("path", tool.notebook_paths(), ids=os.path.basename)
def test_stored_with_outputs_and_figures(path):
    """Figures are visible without running the notebook, and no stored cell failed."""
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), (
        f"{path}: no figure stored; run `python launch/notebooks.py --execute "
        f"{os.path.basename(path)}`"
    )
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{path}: a cell failed"
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.get("execution_count") for c in code), f"{path}: a code cell was not run"
