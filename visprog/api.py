"""The Python API in a few functions: check a program, run it on images."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from visprog.checker import CheckedProgram
from visprog.checker import check as _check
from visprog.registry import Registry
from visprog.runtime import Runtime
from visprog.trace import Trace
from visprog.types import Type

__all__ = ["check", "run"]


def check(
    program: str,
    inputs: Mapping[str, Type] | Iterable[str] | None = None,
    *,
    registry: Registry | None = None,
) -> CheckedProgram:
    """Parse and type-check ``program``; raises ProgramSyntaxError or ProgramCheckError.

    ``inputs`` names what the caller will pass (default ``IMAGE``, ``LEFT``, ``RIGHT``).
    """
    return _check(program, registry, inputs)


def run(
    program: str | CheckedProgram,
    images: Mapping[str, Any] | Any,
    *,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_pixels: int | None = None,
    max_batch: int | None = None,
) -> Trace:
    """Run ``program`` and return its :class:`~visprog.trace.Trace` (``trace.result`` is the answer).

    ``images`` maps input names to images (a path, bytes, a PIL image or a
    numpy array); a single image is passed as ``IMAGE``. Other values (text,
    numbers) are passed through as they are.
    """
    from visprog.images import load_image
    from visprog.interpreter import Interpreter

    if not isinstance(images, Mapping):
        images = {"IMAGE": images}
    loaded = {
        name: load_image(value, max_pixels=max_pixels, name=name) if _is_image_like(value) else value
        for name, value in images.items()
    }
    return Interpreter(registry, runtime, max_batch=max_batch).run(program, loaded)


def _is_image_like(value: Any) -> bool:
    if isinstance(value, (bytes, os.PathLike)):
        return True
    if isinstance(value, str):
        return os.path.exists(value) or "." in os.path.basename(value)
    return hasattr(value, "size") and (hasattr(value, "mode") or hasattr(value, "shape"))
