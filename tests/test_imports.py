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


def imported(path: Path, text: str | None = None) -> set[str]:
    """Every name an import statement in ``path`` (its source ``text``, default: read it)
    names, absolute: ``from a import b`` gives ``a`` and ``a.b`` (b may be a module), relative
    imports resolved against the file's package."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names: set[str] = set()
    source = path.read_text() if text is None else text
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
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


def test_relative_and_from_imports_are_resolved() -> None:
    text = "from skinssl import callbacks\nfrom ..lightning_modules import nets\nfrom . import x\n"
    names = imported(PACKAGE / "datamodules" / "probe.py", text)  # (a name only: not read)
    assert {"skinssl.callbacks", "skinssl.lightning_modules.nets", "skinssl.datamodules.x"} <= names
