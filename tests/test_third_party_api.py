"""visprog uses only the public API of the libraries it builds on, so that their minor releases cannot break it.

Read from the source (no imports): no underscore module or name is imported from these libraries, no
underscore attribute is read from them, no subclass of one of their classes overrides an underscore
method, and transformers' classes come from the top-level package, not from ``transformers.models.*``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = frozenset({"openai", "transformers", "diffusers", "PIL", "huggingface_hub"})
SOURCES = sorted([*(ROOT / "visprog").rglob("*.py"), *(ROOT / "modules").glob("*.py")])


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library(module: str) -> bool:
    return module.partition(".")[0] in LIBRARIES


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def private_uses(source: str) -> list[str]:
    """Each use of a library's private API in ``source``, as ``line: what``."""
    tree = ast.parse(source)
    bound: set[str] = set()  # names that refer to a library's module or object
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _library(alias.name):
                    bound.add(alias.asname or alias.name.partition(".")[0])
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _library(node.module):
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
            if node.module.startswith("transformers.models"):
                found.append(f"{node.lineno}: from {node.module} import ... (import from transformers itself)")
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and _root(node.value) in bound:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and _root(node.args[0]) in bound
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ClassDef) and any(_root(base) in bound for base in node.bases):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _private(item.name):
                    found.append(f"{item.lineno}: {node.name}.{item.name} overrides a private method")
    return sorted(set(found), key=lambda s: int(s.partition(":")[0]))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_api_of_the_libraries(path: Path) -> None:
    uses = private_uses(path.read_text(encoding="utf-8"))
    assert not uses, f"{path.relative_to(ROOT)} uses private API: " + "; ".join(uses)


def test_the_check_finds_what_it_looks_for() -> None:
    source = """
import openai
import PIL.Image as pil
from openai import _exceptions
from transformers.utils._hub import x
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from diffusers.utils import deprecation_utils
from openai import OpenAI

pil._conv_type_shape(None)
hasattr(deprecation_utils, "_resolve_dtype")

class Client(OpenAI):
    def _calculate_retry_timeout(self): ...
    def __init__(self): ...

class Mine:
    def _fine(self): self._also_fine = 1
"""
    assert private_uses(source) == [
        "4: from openai import _exceptions",
        "5: from transformers.utils._hub import ...",
        "6: from transformers.models.blip.image_processing_pil_blip import ... (import from transformers itself)",
        "10: pil._conv_type_shape",
        "11: hasattr(deprecation_utils, '_resolve_dtype')",
        "14: Client._calculate_retry_timeout overrides a private method",
    ]
