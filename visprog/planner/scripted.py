"""A planner whose language model is a list of programs written in advance: for notebooks, demos and tests.

The planner of a real setup asks a language model (an OpenAI-compatible server
or a local model, :func:`visprog.create_planner`) to write the program.
:func:`scripted_planner` gives a planner whose "language model"
(:class:`ScriptedLLM`) answers each request with the next program on a list,
with no network and no model weights. Everything after the reply is the real
planner: the program is extracted, parsed and checked against the registry,
and a program that does not check is sent back with the checker's
diagnostics, as it would be to a real model::

    from visprog.planner.scripted import scripted_planner

    planner = scripted_planner(["OBJ0=FaceDet(image=IMAGE)\\nFINAL_RESULT=Result(var=OBJ0)"])
    visprog.ask("photo.jpg", "Where is the face?", planner=planner)
"""

from __future__ import annotations

from collections.abc import Iterable

from visprog.language.signatures import Registry
from visprog.llm.base import Message
from visprog.planner.core import Planner

__all__ = ["ScriptedLLM", "scripted_planner"]


class ScriptedLLM:
    """A stand-in for a language model: replies with the given programs, in order, without any network.

    It follows the :class:`visprog.llm.LLMClient` protocol (``identity`` and
    ``complete``). Every request it receives is kept in ``requests`` (the chat
    messages, exactly as a real model would get them), so a caller can show
    what the planner sent.
    """

    def __init__(self, replies: Iterable[str]) -> None:
        self.replies = [r.strip() for r in replies]
        self.requests: list[list[Message]] = []

    @property
    def identity(self) -> str:
        return f"scripted:{len(self.replies)} replies"

    def complete(self, messages: list[Message], *, n: int = 1, temperature: float | None = None) -> list[str]:
        self.requests.append([dict(m) for m in messages])
        out = []
        for _ in range(n):
            if not self.replies:
                raise RuntimeError(
                    "ScriptedLLM: no scripted reply left; pass one program per request to scripted_planner()"
                )
            out.append(self.replies.pop(0))
        return out


def scripted_planner(programs: Iterable[str], *, registry: Registry | None = None) -> Planner:
    """A real :class:`~visprog.planner.core.Planner` whose language model is a list of programs.

    ``programs`` are the replies, one per request, in order (a repair round is
    a request too). ``registry`` is what programs are checked against and what
    the prompt's module reference is rendered from (default: every installed
    module). No plan cache, so nothing is written to disk. The :class:`ScriptedLLM`
    is the planner's ``backend`` (its ``requests`` hold what was sent).
    """
    return Planner(ScriptedLLM(programs), registry=registry, cache=False)
