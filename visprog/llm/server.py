"""An OpenAI-compatible server through the ``openai`` client: OpenAI itself, or a local server
(vLLM, llama.cpp, Ollama, LM Studio) at its ``/v1`` address.

Settings follow the client's own conventions:

- model: ``LLMConfig.model``, else ``$VISPROG_LLM_MODEL``, else ``gpt-4o-mini``;
- server: ``LLMConfig.base_url``, else ``$OPENAI_BASE_URL``, else OpenAI's;
- key: ``LLMConfig.api_key``, else ``$OPENAI_API_KEY``; a server given by a
  base URL needs none (a placeholder is sent). The key (and any start of it of 8+ characters), the URL's user
  info and its query values are never shown (:mod:`visprog.llm.masking`): not in errors, ``identity``, ``repr``
  or the HTTP client's logs (``http://***@host/v1?api-key=***``). The query is sent with every request.

Failures (timeouts, refused connections, HTTP errors, answers that are not
completions) become :class:`~visprog.errors.ServiceError` naming the caller
(the planner, or a module such as ``List`` that asks an LLM through this
client), the server and the model, and saying what to check. This is the one
place where ``openai`` client exceptions turn into visprog errors.

A refusal of one request (HTTP 400, 413 or 422: a prompt longer than the
model's context, a content filter, a malformed request) is marked
``per_request=True`` on the error: other requests may well succeed, and
``visprog eval`` records the item and goes on. Every other failure (the
server unreachable or too slow, the key or the model refused, rate limits
after the retries, server errors) is about the service, not the request.

Messages may carry images (content parts, :mod:`visprog.llm.images`): they go
to a chat model as they are; the completion style refuses them, and a refusal
(HTTP 400) that speaks of images or content says how to plan without them.

Lost connections, timeouts and HTTP 408, 409, 429 and 5xx answers are tried
again ``max_retries`` times, here rather than by the ``openai`` client (which
is created with ``max_retries=0``): after the server's ``Retry-After`` when it
gives one, else with exponential backoff (0.5 s doubling, jittered), each wait
capped at :data:`MAX_RETRY_WAIT`. A server's ``x-should-retry`` header is obeyed.
``timeout`` is a deadline for all the requests of one :meth:`OpenAIClient.complete`, retries and
waits included, however slowly an answer arrives (:mod:`visprog.llm.deadline`): a wait
that would pass it (a long ``Retry-After``) ends at once. Errors say how many requests were made.

Grammars: with ``grammar_format`` naming the server's kind (``vllm``,
``llama.cpp``, ``sglang``; default ``none``), the client follows the planner's
``grammar`` constraint: each request carries the whole program's grammar, in
GBNF, in that server's field (:data:`GRAMMAR_FIELDS`), so the server samples
only programs of the language. GBNF is what llama.cpp reads, what SGLang's and
vLLM's default backend (xgrammar) read as EBNF, and what vLLM's guidance
backend reads too (llguidance converts it). A refusal of such a request names
the setting and how to turn it off. A reply cut at the token limit is marked
``truncated`` (:class:`~visprog.llm.constrained.Completion`).

Nothing here imports ``openai`` at import time.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import os
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from visprog.errors import ConfigError, ServiceError, did_you_mean
from visprog.llm.base import PLANNER, Message, check_n, flatten
from visprog.llm.constrained import Completion, GrammarSource
from visprog.llm.deadline import ReplyTooLarge, deadline, deadline_http_client, remaining
from visprog.llm.images import SEE_IMAGE_HINT, has_images
from visprog.llm.masking import mask_logs, mask_secrets, mask_url, remember_secret, url_secrets

__all__ = [
    "DEFAULT_MODEL",
    "GRAMMAR_FIELDS",
    "GRAMMAR_FORMAT_HINT",
    "GRAMMAR_SYNTAX",
    "MAX_BODY_BYTES",
    "MAX_RETRY_WAIT",
    "OPENAI_BASE_URL",
    "PER_REQUEST_STATUSES",
    "RETRY_STATUSES",
    "SERVER_GRAMMAR_FORMATS",
    "STYLES",
    "LLMConfig",
    "OpenAIClient",
    "check_grammar_format",
    "grammar_body",
    "retry_wait",
]

DEFAULT_MODEL = "gpt-4o-mini"
#: The openai client's default server.
OPENAI_BASE_URL = "https://api.openai.com/v1"
#: The longest wait, in seconds, between two tries of one request.
MAX_RETRY_WAIT = 8.0
#: The first wait, in seconds, when the server does not say how long (then doubling).
FIRST_RETRY_WAIT = 0.5
#: HTTP statuses that refuse one request (not the service): ``ServiceError.per_request``.
PER_REQUEST_STATUSES = frozenset({400, 413, 422})
#: HTTP statuses tried again (request timeout, conflict, rate limit); 5xx too.
RETRY_STATUSES = frozenset({408, 409, 429})
#: Placeholder key for servers that need none (the openai client insists on one).
_NO_KEY = "not-needed"
STYLES: tuple[str, ...] = ("chat", "completion")
#: ``grammar_format``: how the server takes a grammar. ``none``: it is not sent (the request is as without one).
SERVER_GRAMMAR_FORMATS: tuple[str, ...] = ("none", "vllm", "llama.cpp", "sglang")
#: Each server's request field for the program grammar (a dotted name is a nested object):
#: vLLM's structured outputs (``{"structured_outputs": {"grammar": ...}}``, since 0.10.2; ``guided_grammar``
#: before, removed in 0.12), llama.cpp server's ``grammar``, SGLang's ``ebnf``.
GRAMMAR_FIELDS: dict[str, str] = {"vllm": "structured_outputs.grammar", "llama.cpp": "grammar", "sglang": "ebnf"}
#: The syntax the grammar is sent in (:meth:`GrammarSource.grammar <visprog.llm.constrained.GrammarSource.grammar>`):
#: GBNF, which all three read (vLLM: xgrammar, its default backend, reads it directly; guidance converts it).
GRAMMAR_SYNTAX = "gbnf"
#: The default of ``max_reply_bytes``: the most bytes of a server's answer that are read.
MAX_BODY_BYTES = 1_000_000
#: Where ``grammar_format`` is set.
GRAMMAR_FORMAT_HINT = "--grammar-format, [llm] grammar_format"
#: The loggers that name the URL of every request (the ``openai`` client's HTTP client): masked.
HTTP_LOGGERS = ("httpx", "httpx2", "openai", "openai._base_client")


@dataclass
class LLMConfig:
    """How to reach an OpenAI-compatible server, and how to sample from it."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    style: str = "chat"
    temperature: float = 0.0
    #: None: no limit is sent (the server's own default)
    max_tokens: int | None = 512
    stop: list[str] | None = None
    timeout: float = 60.0
    max_retries: int = 2
    #: how the server takes the program grammar (:data:`SERVER_GRAMMAR_FORMATS`); ``none``: it is not sent
    grammar_format: str = "none"
    #: the most bytes of an answer's body that are read (all its choices together); a longer one is an error
    max_reply_bytes: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        check_grammar_format(self.grammar_format)
        if isinstance(self.max_reply_bytes, bool) or not isinstance(self.max_reply_bytes, int):
            raise ConfigError(f"{PLANNER}: max_reply_bytes must be a whole number, got {self.max_reply_bytes!r}")
        if self.max_reply_bytes < 1:
            raise ConfigError(f"{PLANNER}: max_reply_bytes must be at least 1, got {self.max_reply_bytes!r}")
        if self.style not in STYLES:
            raise ConfigError(f"{PLANNER}: style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if not self.timeout > 0:
            raise ConfigError(f"{PLANNER}: timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.max_retries < 0:
            raise ConfigError(f"{PLANNER}: max_retries must be 0 or more, got {self.max_retries!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"{PLANNER}: max_tokens must be at least 1, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ConfigError(f"{PLANNER}: temperature must be 0 or more, got {self.temperature!r}")


class OpenAIClient:
    """An OpenAI-compatible server through the ``openai`` client (created on first use, once).

    ``who`` names the caller at the start of every error (``planner``, or a
    module's name such as ``List``); ``option`` is how its settings are called
    in the hints ("check ... the {option} api_key", "({option} timeout)").
    """

    def __init__(self, config: LLMConfig, *, who: str = PLANNER, option: str = "option") -> None:
        self.config = config
        self.who = who
        self.option = option
        self.model = config.model or os.environ.get("VISPROG_LLM_MODEL") or DEFAULT_MODEL
        given_url = config.base_url or os.environ.get("OPENAI_BASE_URL")
        self.base_url = (given_url or OPENAI_BASE_URL).rstrip("/")
        #: the server as every message shows it: no user info, no query values (:mod:`visprog.llm.masking`)
        self.shown_url = mask_url(self.base_url)
        key = config.api_key or os.environ.get("OPENAI_API_KEY")
        self._needs_key = not key and not given_url
        self._api_key = key or _NO_KEY
        self._secrets = [*([key] if key else []), *url_secrets(self.base_url)]
        for secret in self._secrets:  # masked wherever this process shows text
            remember_secret(secret)
        self._client: Any = None
        self._lock = threading.Lock()
        #: whether the server answers n > 1 with n choices (None: not known yet)
        self._n_honoured: bool | None = None

    @property
    def constraint_modes(self) -> tuple[str, ...]:
        """The constraints :meth:`complete` follows: one grammar for the whole program when the server takes
        grammars (``grammar_format``), else none."""
        return ("grammar",) if self.config.grammar_format != "none" else ()

    @property
    def identity(self) -> str:
        return f"openai-{self.config.style}:{self.model}@{self.shown_url}"

    def __repr__(self) -> str:
        return f"OpenAIClient({self.identity!r})"

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        """Every setting, hashable, with a digest in place of the key and the whole URL: a key for sharing one
        client (and its connections) between callers with the same settings. Never holds the key."""
        c = self.config
        digest = hashlib.sha256(f"{self._api_key}\n{self.base_url}".encode()).hexdigest()[:16]
        stop = tuple(c.stop) if c.stop else None
        settings = (c.temperature, c.max_tokens, stop, c.timeout, c.max_retries, c.grammar_format, c.max_reply_bytes)
        return (self.who, self.identity, digest, *settings)

    @property
    def generation(self) -> str:
        """The settings that change what the model writes (not where or how it is reached): part of a plan's key."""
        c = self.config
        return f"temperature={c.temperature!r} max_tokens={c.max_tokens!r} stop={c.stop!r}"

    @property
    def where(self) -> str:
        """The caller, the server and the model, as errors start."""
        return f"{self.who}: the LLM server at {self.shown_url} (model '{self.model}')"

    def _scrub(self, text: str) -> str:
        """``text`` without this client's key and URL secrets, nor any other secret this process knows of."""
        return mask_secrets(text, self._secrets)

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                if self._needs_key:
                    raise ConfigError(
                        f"{self.who}: no API key for the LLM server at {self.shown_url} (model '{self.model}'): "
                        f"set OPENAI_API_KEY or the {self.option} api_key, or point OPENAI_BASE_URL "
                        f"(or the {self.option} base_url) at an OpenAI-compatible server"
                    )
                from openai import OpenAI

                mask_logs(*HTTP_LOGGERS)
                base_url, _, query = self.base_url.partition("?")  # the client would paste the path after it
                # tries again here (retry_wait), not in the client
                self._client = OpenAI(
                    base_url=base_url,
                    default_query=dict(urllib.parse.parse_qsl(query, keep_blank_values=True)) or None,
                    api_key=self._api_key,
                    timeout=self.config.timeout,
                    max_retries=0,
                    http_client=deadline_http_client(self.config.max_reply_bytes),
                )
            return self._client

    def complete(
        self,
        messages: list[Message],
        *,
        n: int = 1,
        temperature: float | None = None,
        constraint: GrammarSource | None = None,
    ) -> list[str]:
        """``n`` replies: one request for all of them, or one request each when the server ignores ``n``.

        Messages with images (content parts, :mod:`visprog.llm.images`) need the chat style. With a
        ``constraint`` (which needs ``grammar_format``), each request carries its whole grammar
        (:func:`grammar_body`) and each reply is a :class:`~visprog.llm.constrained.Completion`,
        ``truncated`` when the server stopped it at the token limit."""
        check_n(n, self.who)
        grammar = None
        if constraint is not None:
            if self.config.grammar_format == "none":
                raise ConfigError(
                    f"{self.where}: a constrained request needs to know how the server takes a grammar: "
                    f"set grammar_format ({GRAMMAR_FORMAT_HINT}) to {', '.join(SERVER_GRAMMAR_FORMATS[1:])}"
                )
            grammar = constraint.grammar(GRAMMAR_SYNTAX)
        if self.config.style != "chat" and has_images(messages):
            raise ConfigError(
                f"{self.where}: images need the chat style (the completion style sends one prompt of text): "
                f"turn off see_image ({SEE_IMAGE_HINT}) or use --style chat with a multimodal model"
            )
        temperature = self.config.temperature if temperature is None else temperature
        client = self._get_client()
        replies: list[str] = []
        made = [0]  # requests sent by this call, for the errors
        with deadline(self.config.timeout):
            while len(replies) < n:
                wanted = n - len(replies) if self._n_honoured is not False else 1
                got = self._request(client, messages, wanted, temperature, grammar, made)
                if wanted > 1:
                    self._n_honoured = len(got) >= wanted
                replies.extend(got)
        return replies[:n]

    def _request(
        self,
        client: Any,
        messages: list[Message],
        n: int,
        temperature: float,
        grammar: str | None = None,
        made: list[int] | None = None,
    ) -> list[str]:
        """One request, tried again after the failures that may pass (up to ``max_retries`` times), as long
        as the wait ends before the deadline. ``made[0]`` counts the requests sent (by the whole call)."""
        import openai

        made = [0] if made is None else made
        tries = 0
        while True:
            try:
                made[0] += 1
                return self._send(client, messages, n, temperature, grammar)
            except openai.OpenAIError as e:
                wait = retry_wait(e, tries) if tries < self.config.max_retries else None
                if wait is None:
                    failure = self._failure(
                        e, made[0], retries=tries, images=has_images(messages), grammar=grammar is not None
                    )
                    raise failure from None
                left = remaining()
                if left is not None and wait >= left:
                    raise self._too_late(e, made[0], left) from None
            tries += 1
            time.sleep(wait)

    def _too_late(self, e: Exception, requests: int, left: float) -> ServiceError:
        """The error when the wait before the next try would pass the deadline."""
        import openai

        made = _requests_made(requests)
        limit = f"{self.config.timeout:g} s deadline ({self.option} timeout)"
        if isinstance(e, openai.APIStatusError):
            asked = _retry_after(e.response.headers)
            answer = f"answered HTTP {e.status_code}: {e.message};"
            if asked is not None and asked >= left:
                return ServiceError(
                    self._scrub(
                        f"{self.where} {answer} it asked to wait {asked:g} s before trying again (Retry-After), "
                        f"past the {limit}: gave up at once after {made}"
                    )
                )
            return ServiceError(self._scrub(f"{self.where} {answer} the {limit} leaves no time to try again ({made})"))
        return self._failure(e, requests)

    def _send(
        self, client: Any, messages: list[Message], n: int, temperature: float, grammar: str | None = None
    ) -> list[str]:
        c = self.config
        options: dict[str, Any] = {"model": self.model, "temperature": temperature}
        if c.max_tokens is not None:
            options["max_tokens"] = c.max_tokens
        if n > 1:
            options["n"] = n
        if c.stop:
            options["stop"] = list(c.stop)
        if grammar is not None:
            options["extra_body"] = grammar_body(c.grammar_format, grammar)
        left = remaining()
        if left is not None:  # each wait for bytes ends by the deadline too
            options["timeout"] = max(left, 0.001)
        try:
            if c.style == "chat":
                response = client.chat.completions.create(messages=messages, **options)
            else:
                response = client.completions.create(prompt=flatten(messages), **options)
        except ReplyTooLarge as e:  # not tried again: the next answer would be as long
            raise ServiceError(
                f"{self.where} sent an answer longer than {e.limit:,} bytes; it was not read further "
                f"({self.option} max_reply_bytes)"
            ) from None
        except ValueError as e:  # a body that is not JSON, or not the expected JSON
            raise ServiceError(self._scrub(f"{self.where} sent an answer that is not JSON: {e}")) from None
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise ServiceError(self._scrub(f"{self.where} sent an answer with no choices: {str(response)[:200]!r}"))
        texts: list[str] = []
        for choice in sorted(choices, key=lambda ch: getattr(ch, "index", 0) or 0):
            if c.style == "chat":
                message = getattr(choice, "message", None)
                text = getattr(message, "content", None)
            else:
                text = getattr(choice, "text", None)
            text = text if isinstance(text, str) else ""
            if grammar is not None:  # cut at the token limit: the program may be incomplete
                text = Completion.of(text, getattr(choice, "finish_reason", None) == "length")
            texts.append(text)
        return texts

    def _failure(
        self, e: Exception, requests: int, *, retries: int = 0, images: bool = False, grammar: bool = False
    ) -> ServiceError:
        """A clear error naming the server and the model, after ``requests`` requests (``retries`` of this one);
        never the key. ``images``: the request carried images, so a refusal that speaks of images or content says
        how to plan without them. ``grammar``: it carried the program grammar, so a refusal says which setting sent
        it and how to turn it off; one that speaks of grammars is about the setting, not this request (every
        request would be refused the same)."""
        import openai

        where = self.where
        if isinstance(e, openai.APITimeoutError):
            message = (
                f"{where} did not answer within {self.config.timeout:g} s ({self.option} timeout); "
                f"{_requests_made(requests)}"
            )
        elif isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e.__context__
            detail = f": {cause}" if cause is not None and str(cause) else ""
            message = f"{where} could not be reached{detail}"
            if requests > 1:
                message += f" ({_requests_made(requests)})"
        elif isinstance(e, openai.AuthenticationError):
            message = f"{where} refused the API key (HTTP 401): check OPENAI_API_KEY or the {self.option} api_key"
        elif isinstance(e, openai.PermissionDeniedError):
            message = f"{where} denied access (HTTP 403): check the API key's permissions for this model"
        elif isinstance(e, openai.NotFoundError):
            message = (
                f"{where} answered HTTP 404: check the model name ({self.option} model) "
                f"and the base URL ({self.option} base_url, ending in /v1)"
            )
        elif isinstance(e, openai.RateLimitError):
            tries = f"{retries} {'retry' if retries == 1 else 'retries'}"
            message = (
                f"{where} is rate limiting requests (HTTP 429) after {tries} "
                f"({_requests_made(requests)}): {e.message}"
            )
        elif isinstance(e, openai.APIStatusError):
            message = f"{where} answered HTTP {e.status_code}: {e.message}"
            if requests > 1:
                message += f" ({_requests_made(requests)})"
            if images and e.status_code in PER_REQUEST_STATUSES and _about_images(e.message):
                message += (
                    " (the request carried the input images: the model may not accept images; turn off see_image "
                    f"({SEE_IMAGE_HINT}) or use a multimodal model)"
                )
            if grammar and e.status_code in PER_REQUEST_STATUSES:
                message += self._grammar_hint()
                if _about_grammars(e.message):
                    return ServiceError(self._scrub(message))
            if e.status_code in PER_REQUEST_STATUSES:
                return ServiceError(self._scrub(message), per_request=True)
        elif isinstance(e, openai.APIResponseValidationError):
            message = f"{where} sent an answer that is not a completion: {e.message}"
        else:
            message = f"{where} failed: {type(e).__name__}: {e}"
        return ServiceError(self._scrub(message))

    def _grammar_hint(self) -> str:
        kind = self.config.grammar_format
        others = [f for f in SERVER_GRAMMAR_FORMATS[1:] if f != kind]
        return (
            f" (the request carried the program grammar in '{GRAMMAR_FIELDS[kind]}', as grammar_format = '{kind}' "
            f"says ({GRAMMAR_FORMAT_HINT}): if this server takes grammars another way, set grammar_format to "
            f"{' or '.join(others)}; if it takes none, set grammar_format to none or plan with --constrain none)"
        )


def check_grammar_format(value: Any, source: str = PLANNER) -> str:
    """``value`` if it is one of :data:`SERVER_GRAMMAR_FORMATS`; else a :class:`ConfigError` naming the setting
    and ``source``."""
    if value not in SERVER_GRAMMAR_FORMATS:
        hint = did_you_mean(value, SERVER_GRAMMAR_FORMATS) if isinstance(value, str) else ""
        raise ConfigError(
            f"{source}: grammar_format ({GRAMMAR_FORMAT_HINT}) must be one of {', '.join(SERVER_GRAMMAR_FORMATS)}, "
            f"got {value!r}{hint}"
        )
    return str(value)


def grammar_body(grammar_format: str, grammar: str) -> dict[str, Any]:
    """The request's extra fields that carry ``grammar`` to a server of kind ``grammar_format``
    (:data:`GRAMMAR_FIELDS`: ``{"structured_outputs": {"grammar": ...}}`` for vLLM, ``{"grammar": ...}``
    for llama.cpp, ``{"ebnf": ...}`` for SGLang)."""
    check_grammar_format(grammar_format)
    if grammar_format == "none":
        raise ValueError("grammar_format 'none' sends no grammar")
    *outer, last = GRAMMAR_FIELDS[grammar_format].split(".")
    body: dict[str, Any] = {last: grammar}
    for name in reversed(outer):
        body = {name: body}
    return body


def retry_wait(e: BaseException, tries: int) -> float | None:
    """Seconds to wait before trying a request again after ``e`` (``tries`` tries so far), or None
    when ``e`` is not worth another try.

    Lost connections and timeouts, and HTTP 408, 409, 429 and 5xx are tried
    again, unless the server says ``x-should-retry: false`` (``true`` makes any
    status worth another try). The wait is the server's ``Retry-After`` (or
    ``retry-after-ms``) when it gives one, else 0.5 s doubling with each try and
    up to a quarter less at random; never more than :data:`MAX_RETRY_WAIT`.
    """
    import openai

    if isinstance(e, openai.APIStatusError):
        headers = e.response.headers
        should = str(headers.get("x-should-retry", "")).lower()
        if should == "false" or (should != "true" and not _retryable_status(e.status_code)):
            return None
        asked = _retry_after(headers)
        if asked is not None:
            return min(asked, MAX_RETRY_WAIT)
    elif not isinstance(e, openai.APIConnectionError):  # timeouts are connection errors too
        return None
    backoff = FIRST_RETRY_WAIT * 2.0 ** min(tries, 30)
    return min(backoff, MAX_RETRY_WAIT) * (1 - 0.25 * random.random())


def _about_images(message: str) -> bool:
    """Whether a server's refusal speaks of images or message content (what a text-only model says of image parts)."""
    text = message.lower()
    return any(word in text for word in ("image", "content", "vision", "multimodal"))


def _about_grammars(message: str) -> bool:
    """Whether a server's refusal speaks of grammars or of the field that carried one."""
    text = message.lower()
    return any(word in text for word in ("grammar", "ebnf", "gbnf", "structured", "guided", "extra_forbidden"))


def _requests_made(requests: int) -> str:
    return f"{requests} request{'s' if requests != 1 else ''} made"


def _retryable_status(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


def _retry_after(headers: Any) -> float | None:
    """The wait a server asks for, in seconds (``retry-after-ms``, or ``Retry-After`` as seconds or a date)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())
