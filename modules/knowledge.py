"""List: a list of things from world knowledge, asked of a language model.

Backend ``openai`` (the only one): any OpenAI-compatible chat-completions
server through the ``openai`` client: OpenAI itself, or a local server (vLLM,
llama.cpp, Ollama, LM Studio) at its ``/v1`` address. Nothing is downloaded.

Options (``[modules.List]`` in the config, or ``--model List=NAME``):

- ``model``: the LLM's name; default ``$VISPROG_LLM_MODEL``, else ``gpt-4o-mini``.
- ``base_url``: the server; default ``$OPENAI_BASE_URL``, else OpenAI's.
- ``api_key``: default ``$OPENAI_API_KEY``; a server given by ``base_url``
  without a key gets a placeholder (local servers accept any).
- ``timeout``: seconds per request (default 60); ``max_retries`` (default 2).
- ``temperature``: default 0, for repeatable lists.

A config file's ``[llm]`` table (the planner's settings) supplies ``model``,
``base_url``, ``api_key``, ``timeout`` and ``max_retries`` where List has none.

The request goes through :class:`visprog.llm.OpenAIClient`, the client the
planner uses too: List and the planner share one client setup (retries of rate
limits, server errors and lost connections with capped backoff) and one
translation of ``openai`` failures into errors that name List, the server and
the model, and say what to check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from visprog.errors import ConfigError, ServiceError
from visprog.language.signatures import Option, at_least, module, not_empty
from visprog.llm import LLMConfig, OpenAIClient
from visprog.running.runtime import Context

__all__ = ["SYSTEM_PROMPT", "List_", "parse_items", "user_prompt"]

SYSTEM_PROMPT = (
    "You answer questions with a plain list. Write one item per line, "
    "with no numbering, no bullets, no quotes and no other text."
)


def user_prompt(query: str, limit: int) -> str:
    return f"List at most {limit} items: {query.strip()}"


# --- parsing --------------------------------------------------------------------

# Leading list markers: bullets (-, *, •, ...), numbers ("1.", "2)", "(3)", "4:"), markdown emphasis.
_MARKER = re.compile(r"^(?:[-*•·‣◦▪–—+>]+\s*|\(?\d{1,3}[.):\]]\s*|#{1,6}\s+)")
_QUOTES = "\"'`“”‘’«»"


def _clean_item(line: str) -> str:
    item = line.strip()
    while True:
        stripped = _MARKER.sub("", item, count=1).strip()
        if stripped == item:
            break
        item = stripped
    item = item.replace("**", "").replace("__", "").strip()
    item = item.rstrip(",;").strip()
    if item.endswith(".") and not item.endswith(".."):
        item = item[:-1].rstrip()
    return item.strip(_QUOTES).strip()


def parse_items(text: str, limit: int | None = None) -> list[str]:
    """The items of a model's list reply, in order, without markers, quotes, blanks or repeats.

    One item per line is expected; a single line of comma-separated items is
    split at the commas; a line that introduces the list ("Here are ...:") is
    dropped.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) == 1 and "," in lines[0]:
        lines = lines[0].split(",")
    elif len(lines) > 1 and lines[0].rstrip().endswith(":"):
        lines = lines[1:]
    out: list[str] = []
    seen: set[str] = set()
    for line in lines:
        item = _clean_item(line)
        key = item.casefold()
        if item and key not in seen:
            seen.add(key)
            out.append(item)
        if limit is not None and len(out) >= limit:
            break
    return out


# --- the LLM ---------------------------------------------------------------------

#: List's options that the planner's [llm] table (``Runtime.llm``) supplies when List has none.
_SHARED = ("model", "base_url", "api_key", "timeout", "max_retries")


def _number(options: Mapping[str, Any], name: str, default: float, kind: type[float] | type[int]) -> Any:
    value = options.get(name)
    if value is None:
        return kind(default)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"List: option {name} must be a number, got {value!r}") from None


def _client(ctx: Context) -> OpenAIClient:
    """The LLM client for List's settings, one per settings in the model pool.

    The client resolves the model, server and key (options, else the
    environment, else the defaults), sends the request, retries and turns every
    ``openai`` failure into a :class:`ServiceError` that starts with ``List:``.
    """
    # the planner's [llm] settings (config file) first, then List's own options
    llm = {k: v for k, v in ctx.runtime.llm.items() if k in _SHARED}
    options = {**llm, **ctx.options}
    timeout = _number(options, "timeout", ctx.option("timeout"), float)
    max_retries = _number(options, "max_retries", ctx.option("max_retries"), int)
    temperature = _number(options, "temperature", ctx.option("temperature"), float)
    if not timeout > 0 or max_retries < 0 or temperature < 0:
        raise ConfigError(
            "List: timeout must be positive, max_retries and temperature 0 or more, "
            f"got {timeout}, {max_retries} and {temperature}"
        )
    config = LLMConfig(
        model=str(options["model"]) if options.get("model") else None,
        base_url=str(options["base_url"]) if options.get("base_url") else None,
        api_key=str(options["api_key"]) if options.get("api_key") else None,
        temperature=temperature,
        max_tokens=None,  # the server's own limit, as a list may be long
        timeout=timeout,
        max_retries=max_retries,
    )
    client = OpenAIClient(config, who="List", option="List option")
    return ctx.pool.get(("openai-client", *client.fingerprint), lambda: client)


def _ask(ctx: Context, query: str, limit: int) -> list[str]:
    client = _client(ctx)
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(query, limit)},
    ]
    (text,) = client.complete(messages)
    if not text:
        raise ServiceError(f"{client.where} returned no text")
    return parse_items(text, limit)


#: List's options (``[modules.List]`` in the config file, ``--option List.NAME=VALUE``).
OPTIONS = [
    Option("model", str, None, "the LLM (default: the [llm] table's, else $VISPROG_LLM_MODEL, else gpt-4o-mini)"),
    Option("base_url", str, None, "an OpenAI-compatible server (default: $OPENAI_BASE_URL, else OpenAI's)"),
    Option("api_key", str, None, "the server's key (default: $OPENAI_API_KEY)"),
    Option("timeout", float, 60.0, "seconds per request"),
    Option("max_retries", int, 2, "retries of a failed request"),
    Option("temperature", float, 0.0, "sampling temperature (0: repeatable lists)"),
]


#: List's checks of literal arguments, run before any model (``validate=`` of :func:`module`).
VALIDATORS = {"query": not_empty("something to list"), "max": at_least(1)}


@module(name="List", aliases=["LIST"], backends={"openai": None}, options=OPTIONS, validate=VALIDATORS)
def List_(query: str, max: int = 20, *, ctx: Context) -> list[str]:
    """List things from world knowledge, asked of a language model (one short item each).

    Use it for facts that are not in the image, e.g. the names of a TV show's
    characters, to pass on to Select, Classify or Loc.

    Args:
        query: what to list, e.g. 'main characters of the TV show Big Bang Theory'.
        max: the largest number of items to return.
    """
    problem = VALIDATORS["max"](max)
    if problem:
        raise ValueError(f"List: max {problem}")
    if not query.strip():
        raise ValueError("List: the query is empty")
    return _ask(ctx, query, max)
