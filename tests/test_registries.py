"""Every registered name resolves, and the registry module knows no package's entries."""

from __future__ import annotations

import ast
import pathlib

import pytest

from advjax import registry
from advjax.attacks import ATTACKS
from advjax.data import DATA_SOURCES
from advjax.experiments import ANALYSES
from advjax.models import MODELS
from advjax.objectives import OBJECTIVES

REGISTRIES = {
    "models": MODELS,
    "data": DATA_SOURCES,
    "attacks": ATTACKS,
    "objectives": OBJECTIVES,
    "experiments": ANALYSES,
}


@pytest.mark.parametrize("package", sorted(REGISTRIES))
def test_every_registered_name_resolves_to_a_callable(package):
    reg = REGISTRIES[package]
    assert reg.names(), f"{package} registers nothing"
    for name in reg.names():
        assert callable(reg.get(name)), f"{package} entry {name!r} is not callable"


def test_registry_module_imports_no_advjax_package():
    source = pathlib.Path(registry.__file__).read_text()
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not [m for m in imported if m and m.startswith("advjax")]
