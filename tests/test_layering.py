"""The layout shows the architecture: layers talk only through ``kofo.wire`` types."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kofo"

# package -> kofo packages it must never import (directly)
FORBIDDEN = {
    "wire": ("kofo.settlement", "kofo.clearance", "kofo.exchange", "kofo.node", "kofo.cli"),
    "clearance": ("kofo.settlement", "kofo.exchange", "kofo.node", "kofo.cli"),
    "exchange": ("kofo.settlement", "kofo.clearance", "kofo.node", "kofo.cli"),
    "settlement": ("kofo.clearance", "kofo.exchange", "kofo.node", "kofo.cli"),
    # The node composes the layers (it may import all of them); only the CLI sits above it.
    "node": ("kofo.cli",),
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_no_other_layer(package):
    offenders = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in sorted((SRC / package).rglob("*.py"))
        if "gen" not in path.relative_to(SRC).parts
        for name in _imports(path)
        if name.startswith(FORBIDDEN[package])
    ]
    assert offenders == []
