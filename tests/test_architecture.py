"""The structure the README's architecture section promises, checked on the source tree.

The layer order and the absence of cycles are import-linter contracts in
pyproject.toml (`make lint` runs `lint-imports`); these tests cover what a
contract cannot say.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "visprog").rglob("*.py"), *(ROOT / "modules").rglob("*.py")])
#: "about 500 lines": a file may run a little over while it keeps one concern
MAX_LINES = 550


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "modules":
        parts = ["visprog", *parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of every import in ``path``, at any depth, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.extend((node.lineno, base, alias.name) for alias in node.names)
    return out


def test_sources_are_found() -> None:
    names = {_module_name(p) for p in SOURCES}
    assert {"visprog.language.parser", "visprog.running.interpreter", "visprog.modules.logic"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_of_another_module_is_imported(path: Path) -> None:
    here = _module_name(path)
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {module}.{name}"
        for line, module, name in _imports(path)
        if module.startswith("visprog")
        and module != here
        and (
            (name is not None and name.startswith("_") and not name.startswith("__"))
            or any(part.startswith("_") and not part.startswith("__") for part in module.split("."))
        )
    ]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


MODULES = {_module_name(p) for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_attribute_of_another_module_is_used(path: Path) -> None:
    """``hub._offline`` is as private as ``from hub import _offline``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = _module_name(path)
    aliases: dict[str, str] = {}  # local name -> the visprog module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in MODULES:
                    aliases[alias.asname or alias.name] = full
    bad = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and aliases[node.value.id] != here
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    ]
    assert not bad, "private attributes of other modules used:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", [p for p in SOURCES if "modules" not in p.relative_to(ROOT).parts[:1]])
def test_visprog_never_imports_the_builtin_modules(path: Path) -> None:
    """Built-ins load through the entry-point group, like any plugin."""
    bad = [line for line, module, _ in _imports(path) if module.split(".")[:2] == ["visprog", "modules"]]
    assert not bad, f"{path.relative_to(ROOT)} imports visprog.modules on line(s) {bad}"


def test_files_stay_small() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in SOURCES}
    large = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not large, f"files over {MAX_LINES} lines: {large}"


def test_no_module_is_named_like_the_standard_library() -> None:
    clashes = sorted(
        str(p.relative_to(ROOT)) for p in SOURCES if p.stem in sys.stdlib_module_names and p.stem != "__init__"
    )
    assert not clashes, f"named like a standard-library module: {clashes}"
