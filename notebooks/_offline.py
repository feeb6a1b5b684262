"""Helpers that let the notebooks run offline: a scripted planner and a compact image display.

The planner of a real setup asks a language model (an OpenAI-compatible server
or a local model) to write the program. These notebooks run in CI with no
network and no model weights, so :func:`scripted_planner` gives them a planner
whose "language model" is a list of programs written in advance: it answers
each request with the next program on the list. Everything after the reply is
the real planner: the program is extracted, parsed and checked against the
registry, and a program that does not check is sent back with the checker's
diagnostics, as it would be to a real model.

For a real planner, use ``visprog.create_planner()`` (it reads
``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and ``VISPROG_LLM_MODEL``), or leave
``planner=`` out of ``visprog.ask`` / ``visprog.edit``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from visprog.planner.core import Planner
from visprog.language.signatures import Registry

__all__ = ["ScriptedLLM", "scripted_planner", "show"]


class ScriptedLLM:
    """A stand-in for a language model: replies with the given programs, in order, without any network.

    It follows the ``visprog.llm.LLMClient`` protocol (``identity`` and
    ``complete``). Every request it receives is kept in ``requests`` (the chat
    messages, exactly as a real model would get them), so a notebook can show
    what the planner sent.
    """

    def __init__(self, replies: Iterable[str]) -> None:
        self.replies = [r.strip() for r in replies]
        self.requests: list[list[dict[str, str]]] = []

    @property
    def identity(self) -> str:
        return f"scripted:{len(self.replies)} replies"

    def complete(self, messages: list[dict[str, str]], *, n: int = 1, temperature: float | None = None) -> list[str]:
        self.requests.append([dict(m) for m in messages])
        out = []
        for _ in range(n):
            if not self.replies:
                raise RuntimeError(
                    "ScriptedLLM: no scripted reply left; pass one program per request to scripted_planner()"
                )
            out.append(self.replies.pop(0))
        return out


def scripted_planner(programs: list[str], *, registry: Registry | None = None) -> Planner:
    """A real :class:`~visprog.planner.core.Planner` whose language model is a list of programs.

    ``programs`` are the replies, one per request, in order (a repair round is
    a request too). ``registry`` is what programs are checked against and what
    the prompt's module reference is rendered from (default: every installed
    module). No plan cache, so nothing is written to disk.
    """
    return Planner(ScriptedLLM(programs), registry=registry, cache=False)


def show(*images: Any, height: int = 256, gap: int = 8) -> Any:
    """Images side by side, scaled to one height, as a single PNG (small, so the saved notebooks stay light).

    Accepts PIL images and numpy arrays (a boolean array, such as a mask, shows white where it is
    True); returns an ``IPython.display.Image``.
    """
    from IPython.display import Image as DisplayImage
    from PIL import Image as PILImage

    pictures = [_picture(im) for im in images]
    pictures = [p.convert("RGB").resize((max(1, round(p.width * height / p.height)), height)) for p in pictures]
    sheet = PILImage.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1), height), "white")
    x = 0
    for p in pictures:
        sheet.paste(p, (x, 0))
        x += p.width + gap
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return DisplayImage(data=buffer.getvalue(), format="png")


def _picture(image: Any) -> Any:
    import numpy as np
    from PIL import Image as PILImage

    if isinstance(image, PILImage.Image):
        return image
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return PILImage.fromarray(array)
