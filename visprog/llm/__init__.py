"""One client layer for language models, used by the planner and by modules that ask an LLM (``List``).

Every client answers ``complete(messages, n=..., temperature=...)`` with ``n``
replies (:class:`LLMClient`) and names itself by ``identity`` (for plan-cache
keys; never an API key):

- :class:`OpenAIClient` (``server.py``): any OpenAI-compatible server, with
  retries, and ``openai`` failures turned into errors that name the caller,
  the server and the model;
- :class:`TransformersClient` (``local.py``): a causal LM from the Hugging Face
  hub or a folder, run in this process;
- :func:`client_from_options` (``clients.py``): the one or the other from
  settings (CLI flags, a config file's ``[llm]`` table, keyword arguments).

A message's content is text, or a list of OpenAI content parts with images
(``images.py``: downscaled JPEG data URLs, for planning with ``see_image``);
a client that cannot show images to its model says so rather than drop them.

Importing this package imports neither ``openai`` nor ``torch``.
"""

from visprog.llm.base import LLMClient, flatten
from visprog.llm.clients import client_from_options
from visprog.llm.local import TransformersClient
from visprog.llm.server import DEFAULT_MODEL, LLMConfig, OpenAIClient

__all__ = [
    "DEFAULT_MODEL",
    "LLMClient",
    "LLMConfig",
    "OpenAIClient",
    "TransformersClient",
    "client_from_options",
    "flatten",
]
