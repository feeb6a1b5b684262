"""Planning with the input images in view (``see_image``): the user's turn as text and image parts.

With ``see_image`` on, the last user message of a prompt becomes a list of
OpenAI content parts: the task's input (the question, statement or
instruction) with one sentence saying which images are attached, then one
``image_url`` part per input, in the task's order, each downscaled so that its
longer side is at most ``see_image_side`` pixels (:mod:`visprog.llm.images`).
The in-context examples stay text. :func:`images_key` is what the plan cache
adds to its key: a digest of the pixels sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from visprog.errors import ConfigError
from visprog.llm.base import Message
from visprog.llm.images import SEE_IMAGE_HINT, downscale, image_part, pixels_digest
from visprog.planner.tasks import Task

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["attached_sentence", "images_key", "seen_images", "with_images"]


def seen_images(task: Task, images: Mapping[str, Any] | None, side: int) -> list[tuple[str, Image]]:
    """The task's input images, in its order, as the model will see them (RGB, longer side at most ``side``).

    A value that is not a PIL image (a path, bytes, a numpy array) is loaded first. Raises
    :class:`ConfigError` when an input of the task has no image.
    """
    from PIL import Image as PILImage

    from visprog.running.images import load_image

    given = images or {}
    missing = [name for name in task.inputs if given.get(name) is None]
    if missing:
        raise ConfigError(
            f"planner: see_image is on ({SEE_IMAGE_HINT}), so task {task.name} is planned with its images in view, "
            f"but no image was given for {', '.join(missing)} (pass images={{name: image}} to plan)"
        )
    seen = []
    for name in task.inputs:
        value = given[name]
        image = value if isinstance(value, PILImage.Image) else load_image(value, name=name)
        seen.append((name, downscale(image, side)))
    return seen


def attached_sentence(names: Sequence[str]) -> str:
    """The sentence telling the model which images come with the text: ``The image IMAGE is attached.``"""
    if len(names) == 1:
        return f"The image {names[0]} is attached."
    listed = ", ".join(names[:-1]) + " and " + names[-1]
    return f"The images {listed} are attached, in that order."


def with_images(messages: Sequence[Message], seen: Sequence[tuple[str, Image]]) -> list[Message]:
    """``messages`` with the last one (the user's turn) as a text part, the sentence added, then the images."""
    *before, last = messages
    text = f"{last['content']}\n\n{attached_sentence([name for name, _ in seen])}"
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [image_part(image) for _, image in seen]
    return [*before, {**last, "content": parts}]


def images_key(seen: Sequence[tuple[str, Image]]) -> str:
    """The plan cache's part for the images sent: their names, sizes and pixels, hashed."""
    return f"images:{pixels_digest(seen)}"
