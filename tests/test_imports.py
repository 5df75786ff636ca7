"""DESIGN's import direction, checked on every import statement (function-level ones too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skinssl"
FORBIDDEN = {
    "labels.py": ("skinssl.",),
    "datamodules": ("skinssl.lightning_modules", "skinssl.callbacks", "skinssl.cli"),
    "lightning_modules": ("skinssl.datamodules", "skinssl.callbacks", "skinssl.cli"),
}


def imported(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_point_one_way(part: str) -> None:
    target = PACKAGE / part
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    assert files
    wrong = [
        f"{f.relative_to(PACKAGE.parent)} imports {name}"
        for f in files
        for name in sorted(imported(f))
        if name.startswith(FORBIDDEN[part]) or name + "." in FORBIDDEN[part]
    ]
    assert not wrong, wrong
