"""The package's layers: families build on ``_core`` and never import one another."""

import ast
from pathlib import Path

import pytest

import mmopt

FAMILIES = ("mm", "ot", "registration", "bilevel", "bcd")
ROOT = Path(mmopt.__file__).parent


def _imported_modules(path: Path):
    """Every module a file imports, at module level or inside a function."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _family_of(module: str):
    parts = module.split(".")
    if parts[0] == "mmopt" and len(parts) > 1 and parts[1] in FAMILIES:
        return parts[1]
    return None


@pytest.mark.parametrize("family", FAMILIES)
def test_no_family_imports_another(family):
    # Shared machinery (the MM problem and solver that SP²OT builds on, line searches,
    # Anderson acceleration) lives in _core; a family importing another would make the
    # families a web instead of layers. The CLI demos are the one exception.
    for path in sorted((ROOT / family).rglob("*.py")):
        if path.name == "_demo.py":
            continue
        for module in _imported_modules(path):
            other = _family_of(module)
            assert other in (None, family), (
                f"{path.relative_to(ROOT)} imports {module}: families import each other "
                "only through mmopt._core"
            )


def test_core_imports_no_family():
    for path in sorted((ROOT / "_core").rglob("*.py")):
        for module in _imported_modules(path):
            assert _family_of(module) is None, f"{path.relative_to(ROOT)} imports {module}"
