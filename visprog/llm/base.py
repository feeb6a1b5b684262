"""What every LLM client answers: ``complete(messages, n=..., temperature=...)``, and chat messages as one prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["PLANNER", "LLMClient", "Message", "check_n", "flatten"]

#: The caller named in errors when none is given: the planner.
PLANNER = "planner"
#: A chat message: ``role`` and ``content``, a string or a list of OpenAI content parts (text, ``image_url``).
Message = dict[str, Any]


@runtime_checkable
class LLMClient(Protocol):
    """Something that answers chat messages with ``n`` replies."""

    @property
    def identity(self) -> str:
        """Stable text naming the client and model (and server), for plan-cache keys; never the key."""
        ...

    def complete(self, messages: list[Message], *, n: int = 1, temperature: float | None = None) -> list[str]:
        """``n`` replies to ``messages``; ``temperature`` overrides the client's own.

        A message's content may be a list of parts with images (:mod:`visprog.llm.images`); a client
        that cannot show them to its model raises :class:`~visprog.errors.ConfigError`, never drops them."""
        ...


def flatten(messages: Sequence[Message]) -> str:
    """Chat messages as one completion prompt.

    A single user or system message is its content, unchanged (so a prompt
    built for completion models passes through as is). Otherwise: the system
    message, then each turn as ``User:`` / ``Assistant:`` followed by its text
    on the next line, blocks separated by a blank line, ending with
    ``Assistant:`` and a newline for the model to go on from. Content given as parts
    (:mod:`visprog.llm.images`) has no place in one prompt: a :class:`ValueError`.
    """
    for message in messages:
        if not isinstance(message.get("content", ""), str):
            raise ValueError("chat messages with content parts (images) cannot be flattened into one prompt")
    if not messages:
        return ""
    if len(messages) == 1 and messages[0].get("role", "user") in ("user", "system"):
        return messages[0].get("content", "")
    blocks = []
    for message in messages:
        role = message.get("role", "user")
        content = message.get("content", "").strip()
        blocks.append(content if role == "system" else f"{role.capitalize()}:\n{content}")
    if messages[-1].get("role") != "assistant":
        blocks.append("Assistant:\n")
    return "\n\n".join(blocks)


def check_n(n: int, who: str = PLANNER) -> None:
    """Refuse a request for fewer than one reply (a :class:`ValueError` naming ``who``)."""
    if n < 1:
        raise ValueError(f"{who}: n must be at least 1, got {n}")
