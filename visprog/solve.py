"""The Python API in a few functions: check a program, run it on images."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from visprog.language.checker import CheckedProgram
from visprog.language.checker import check as _check
from visprog.language.signatures import Registry
from visprog.language.values import Type
from visprog.running.plugins import default_registry
from visprog.running.runtime import Runtime
from visprog.running.trace import Trace

if TYPE_CHECKING:
    from visprog.planner.core import Planner, Solution

__all__ = ["ask", "check", "create_planner", "edit", "run", "solve", "tag", "verify"]


def check(
    program: str,
    inputs: Mapping[str, Type] | Iterable[str] | None = None,
    *,
    registry: Registry | None = None,
) -> CheckedProgram:
    """Parse and type-check ``program``; raises ProgramSyntaxError or ProgramCheckError.

    ``inputs`` names what the caller will pass (default ``IMAGE``, ``LEFT``, ``RIGHT``).
    """
    return _check(program, registry or default_registry(), inputs)


def run(
    program: str | CheckedProgram,
    images: Mapping[str, Any] | Any,
    *,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_pixels: int | None = None,
    max_batch: int | None = None,
) -> Trace:
    """Run ``program`` and return its :class:`~visprog.running.trace.Trace` (``trace.result`` is the answer).

    ``images`` maps input names to images (a path, bytes, a PIL image or a
    numpy array); a single image is passed as ``IMAGE``. Other values (text,
    numbers) are passed through as they are.
    """
    from visprog.running.images import load_image
    from visprog.running.interpreter import Interpreter

    if not isinstance(images, Mapping):
        images = {"IMAGE": images}
    loaded = {
        name: load_image(value, max_pixels=max_pixels, name=_label(name, value)) if _is_image_like(value) else value
        for name, value in images.items()
    }
    return Interpreter(registry, runtime, max_batch=max_batch).run(program, loaded)


def _label(name: str, value: Any) -> str | None:
    """How an image error names the input: a file by its path, anything else by the input's name."""
    return None if isinstance(value, (str, os.PathLike)) else name


def _is_image_like(value: Any) -> bool:
    if isinstance(value, (bytes, os.PathLike)):
        return True
    if isinstance(value, str):
        # a path: an existing file, or a name with an image suffix (reported as missing if it is)
        from PIL import Image as PILImage

        suffix = os.path.splitext(value)[1].lower()
        return os.path.isfile(value) or ("\n" not in value and suffix in PILImage.registered_extensions())
    return hasattr(value, "size") and (hasattr(value, "mode") or hasattr(value, "shape"))


# -- planning: natural language in -------------------------------------------------------------


def create_planner(
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    style: str | None = None,
    local: str | None = None,
    registry: Registry | None = None,
    repair_rounds: int = 2,
    cache: bool = True,
    **llm_options: Any,
) -> Planner:
    """A planner on an OpenAI-compatible server (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``,
    ``VISPROG_LLM_MODEL`` as the openai client reads them) or, with ``local=``, a local
    transformers causal LM (a hub id or folder)."""
    from visprog.llm.clients import backend_from_options
    from visprog.planner.core import Planner

    backend = backend_from_options(
        model=model, base_url=base_url, api_key=api_key, style=style or "chat", local=local, **llm_options
    )
    return Planner(backend, registry=registry, repair_rounds=repair_rounds, cache=cache)


def solve(
    task: str,
    text: str,
    images: Mapping[str, Any],
    *,
    planner: Planner | None = None,
    samples: int = 1,
    temperature: float | None = None,
    feed_errors: bool = False,
    registry: Registry | None = None,
    runtime: Runtime | None = None,
    max_pixels: int | None = None,
    max_batch: int | None = None,
    **planner_options: Any,
) -> Solution:
    """Plan a program for ``text`` with the ``task``'s prompts, run it on ``images``, return the
    :class:`~visprog.planner.core.Solution` (``.result``, ``.program``, ``.trace``, ``.agreement``)."""
    from visprog.running.images import load_image
    from visprog.running.interpreter import Interpreter

    loaded = {
        name: load_image(value, max_pixels=max_pixels, name=_label(name, value)) for name, value in images.items()
    }
    planner = planner or create_planner(registry=registry, **planner_options)
    interpreter = Interpreter(planner.registry, runtime, max_batch=max_batch)
    return planner.solve(
        task, text, loaded, interpreter.run, samples=samples, temperature=temperature, feed_errors=feed_errors
    )


def ask(image: Any, question: str, **options: Any) -> Solution:
    """Answer a question about one image (GQA style)."""
    return solve("gqa", question, {"IMAGE": image}, **options)


def verify(left: Any, right: Any, statement: str, **options: Any) -> Solution:
    """Decide whether a statement about two images holds (NLVR style); ``.result`` is True or False."""
    return solve("nlvr", statement, {"LEFT": left, "RIGHT": right}, **options)


def edit(image: Any, instruction: str, **options: Any) -> Solution:
    """Edit an image by instruction; ``.result`` is the edited image."""
    return solve("edit", instruction, {"IMAGE": image}, **options)


def tag(image: Any, instruction: str, **options: Any) -> Solution:
    """Tag objects in an image with knowledge ("Tag the main characters of ..."); ``.result`` is an image."""
    return solve("tag", instruction, {"IMAGE": image}, **options)
