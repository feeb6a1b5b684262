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
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from visprog.errors import ConfigError, ServiceError
from visprog.registry import module
from visprog.runtime import Context

__all__ = ["DEFAULT_MODEL", "SYSTEM_PROMPT", "List_", "parse_items", "user_prompt"]

DEFAULT_MODEL = "gpt-4o-mini"
OPENAI_BASE_URL = "https://api.openai.com/v1"
#: Placeholder key for servers that need none (the openai client insists on one).
_NO_KEY = "not-needed"

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


# --- the client -------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    model: str
    base_url: str
    api_key: str
    timeout: float
    max_retries: int
    temperature: float

    def scrub(self, text: str) -> str:
        """``text`` without the API key in it."""
        return text.replace(self.api_key, "***") if self.api_key and self.api_key != _NO_KEY else text


def _settings(options: Mapping[str, Any]) -> _Settings:
    model = str(options.get("model") or os.environ.get("VISPROG_LLM_MODEL") or DEFAULT_MODEL)
    given_url = options.get("base_url") or os.environ.get("OPENAI_BASE_URL")
    base_url = str(given_url or OPENAI_BASE_URL).rstrip("/")
    api_key = options.get("api_key") or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if not given_url:
            raise ConfigError(
                f"List: no API key for the LLM server at {base_url} (model '{model}'): set OPENAI_API_KEY "
                "or the List option api_key, or point OPENAI_BASE_URL (or the option base_url) at an "
                "OpenAI-compatible server"
            )
        api_key = _NO_KEY
    timeout = float(options.get("timeout", 60.0))
    max_retries = int(options.get("max_retries", 2))
    if timeout <= 0 or max_retries < 0:
        raise ConfigError(f"List: timeout must be positive and max_retries >= 0, got {timeout} and {max_retries}")
    return _Settings(model, base_url, str(api_key), timeout, max_retries, float(options.get("temperature", 0.0)))


def _client(ctx: Context, s: _Settings) -> Any:
    """One OpenAI client per server, key, timeout and retries, kept in the model pool."""
    digest = hashlib.sha256(s.api_key.encode()).hexdigest()[:16]  # the pool's key never holds the key itself

    def make() -> Any:
        from openai import OpenAI

        return OpenAI(base_url=s.base_url, api_key=s.api_key, timeout=s.timeout, max_retries=s.max_retries)

    return ctx.pool.get(("openai-client", s.base_url, digest, s.timeout, s.max_retries), make)


def _failure(e: Exception, s: _Settings) -> ServiceError:
    """A clear error naming the module, the server and the model; never the key."""
    import openai

    where = f"List: the LLM server at {s.base_url} (model '{s.model}')"
    if isinstance(e, openai.APITimeoutError):
        message = f"{where} did not answer within {s.timeout:g} s (option timeout)"
    elif isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e.__context__
        detail = f": {cause}" if cause is not None and str(cause) else ""
        message = f"{where} could not be reached{detail}"
    elif isinstance(e, openai.AuthenticationError):
        message = f"{where} refused the API key (HTTP 401): check OPENAI_API_KEY or the List option api_key"
    elif isinstance(e, openai.PermissionDeniedError):
        message = f"{where} denied access (HTTP 403): check the API key's permissions for this model"
    elif isinstance(e, openai.NotFoundError):
        message = f"{where} answered HTTP 404: check the model name (option model) and base_url (ending in /v1)"
    elif isinstance(e, openai.APIStatusError):
        message = f"{where} answered HTTP {e.status_code}: {e.message}"
    else:
        message = f"{where} failed: {type(e).__name__}: {e}"
    return ServiceError(s.scrub(message))


def _ask(ctx: Context, query: str, limit: int) -> list[str]:
    import openai

    # the planner's [llm] settings (config file) first, then List's own options
    llm = {k: v for k, v in ctx.runtime.llm.items() if k in ("model", "base_url", "api_key", "timeout", "max_retries")}
    s = _settings({**llm, **ctx.options})
    client = _client(ctx, s)
    try:
        response = client.chat.completions.create(
            model=s.model,
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_prompt(query, limit)},
            ],
            temperature=s.temperature,
        )
    except openai.OpenAIError as e:
        raise _failure(e, s) from None
    choices = getattr(response, "choices", None) or []
    text = choices[0].message.content if choices else None
    if not text:
        raise ServiceError(f"List: the LLM server at {s.base_url} (model '{s.model}') returned no text")
    return parse_items(text, limit)


@module(name="List", aliases=["LIST"], backends={"openai": None})
def List_(query: str, max: int = 20, *, ctx: Context) -> list[str]:
    """List things from world knowledge, asked of a language model (one short item each).

    Use it for facts that are not in the image, e.g. the names of a TV show's
    characters, to pass on to Select, Classify or Loc.

    Args:
        query: what to list, e.g. 'main characters of the TV show Big Bang Theory'.
        max: the largest number of items to return.
    """
    if max < 1:
        raise ValueError(f"List: max must be at least 1, got {max}")
    if not query.strip():
        raise ValueError("List: the query is empty")
    return _ask(ctx, query, max)
