"""LLM backends for the planner: an OpenAI-compatible server, or a local causal LM.

:class:`OpenAIBackend` talks to any OpenAI-compatible server through the
``openai`` client: OpenAI itself, or a local server (vLLM, llama.cpp, Ollama,
LM Studio) at its ``/v1`` address. Settings follow the client's own
conventions:

- model: ``LLMConfig.model``, else ``$VISPROG_LLM_MODEL``, else ``gpt-4o-mini``;
- server: ``LLMConfig.base_url``, else ``$OPENAI_BASE_URL``, else OpenAI's;
- key: ``LLMConfig.api_key``, else ``$OPENAI_API_KEY``; a server given by a
  base URL needs none (a placeholder is sent). The key is never shown: it is
  scrubbed from every error and left out of ``identity`` and ``repr``.

Failures (timeouts, refused connections, HTTP errors, answers that are not
completions) become :class:`~visprog.errors.ServiceError` naming the caller
(the planner, or a module such as ``List`` that asks an LLM through this
backend), the server and the model, and saying what to check. This is the one
place where ``openai`` client exceptions turn into visprog errors.

A refusal of one request (HTTP 400, 413 or 422: a prompt longer than the
model's context, a content filter, a malformed request) is marked
``per_request=True`` on the error: other requests may well succeed, and
``visprog eval`` records the item and goes on. Every other failure (the
server unreachable or too slow, the key or the model refused, rate limits
after the retries, server errors) is about the service, not the request.

Rate limits (429), server errors (5xx) and connection errors are retried
``max_retries`` times by the client with exponential backoff
(0.5 s doubling, jittered), each wait capped at :data:`MAX_RETRY_WAIT` even
when the server asks for a longer ``Retry-After``.

:class:`TransformersBackend` runs a causal LM from the Hugging Face hub or a
folder in this process (no server), loaded on first use.

Nothing here imports ``openai``, ``torch`` or ``transformers`` at import time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

from visprog.errors import ConfigError, ModelUnavailableError, ServiceError

__all__ = [
    "DEFAULT_MODEL",
    "MAX_RETRY_WAIT",
    "OPENAI_BASE_URL",
    "PER_REQUEST_STATUSES",
    "STYLES",
    "LLMBackend",
    "LLMConfig",
    "OpenAIBackend",
    "TransformersBackend",
    "backend_from_options",
    "flatten",
]

DEFAULT_MODEL = "gpt-4o-mini"
#: The openai client's default server.
OPENAI_BASE_URL = "https://api.openai.com/v1"
#: The longest wait, in seconds, between two tries of one request.
MAX_RETRY_WAIT = 8.0
#: HTTP statuses that refuse one request (not the service): ``ServiceError.per_request``.
PER_REQUEST_STATUSES = frozenset({400, 413, 422})
#: Placeholder key for servers that need none (the openai client insists on one).
_NO_KEY = "not-needed"
STYLES: tuple[str, ...] = ("chat", "completion")
_WHO = "planner"


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

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ConfigError(f"{_WHO}: style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if not self.timeout > 0:
            raise ConfigError(f"{_WHO}: timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.max_retries < 0:
            raise ConfigError(f"{_WHO}: max_retries must be 0 or more, got {self.max_retries!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"{_WHO}: max_tokens must be at least 1, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ConfigError(f"{_WHO}: temperature must be 0 or more, got {self.temperature!r}")


@runtime_checkable
class LLMBackend(Protocol):
    """Something that answers chat messages with ``n`` replies."""

    @property
    def identity(self) -> str:
        """Stable text naming the backend and model (and server), for plan-cache keys; never the key."""
        ...

    def complete(self, messages: list[dict[str, str]], *, n: int = 1, temperature: float | None = None) -> list[str]:
        """``n`` replies to ``messages``; ``temperature`` overrides the backend's own."""
        ...


def flatten(messages: Sequence[dict[str, str]]) -> str:
    """Chat messages as one completion prompt.

    A single user or system message is its content, unchanged (so a prompt
    built for completion models passes through as is). Otherwise: the system
    message, then each turn as ``User:`` / ``Assistant:`` followed by its text
    on the next line, blocks separated by a blank line, ending with
    ``Assistant:`` and a newline for the model to go on from.
    """
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


def _check_n(n: int, who: str = _WHO) -> None:
    if n < 1:
        raise ValueError(f"{who}: n must be at least 1, got {n}")


# --- OpenAI-compatible servers ------------------------------------------------------


class OpenAIBackend:
    """An OpenAI-compatible server through the ``openai`` client (created on first use, once).

    ``who`` names the caller at the start of every error (``planner``, or a
    module's name such as ``List``); ``option`` is how its settings are called
    in the hints ("check ... the {option} api_key", "({option} timeout)").
    """

    def __init__(self, config: LLMConfig, *, who: str = _WHO, option: str = "option") -> None:
        self.config = config
        self.who = who
        self.option = option
        self.model = config.model or os.environ.get("VISPROG_LLM_MODEL") or DEFAULT_MODEL
        given_url = config.base_url or os.environ.get("OPENAI_BASE_URL")
        self.base_url = (given_url or OPENAI_BASE_URL).rstrip("/")
        key = config.api_key or os.environ.get("OPENAI_API_KEY")
        self._needs_key = not key and not given_url
        self._api_key = key or _NO_KEY
        self._client: Any = None
        self._lock = threading.Lock()
        #: whether the server answers n > 1 with n choices (None: not known yet)
        self._n_honoured: bool | None = None

    @property
    def identity(self) -> str:
        return f"openai-{self.config.style}:{self.model}@{self.base_url}"

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.identity!r})"

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        """Every setting, hashable, with a digest in place of the key: a key for sharing one backend
        (and its client's connections) between callers with the same settings. Never holds the key."""
        c = self.config
        digest = hashlib.sha256(self._api_key.encode()).hexdigest()[:16]
        stop = tuple(c.stop) if c.stop else None
        return (self.who, self.identity, digest, c.temperature, c.max_tokens, stop, c.timeout, c.max_retries)

    @property
    def _where(self) -> str:
        return f"{self.who}: the LLM server at {self.base_url} (model '{self.model}')"

    def _scrub(self, text: str) -> str:
        key = self._api_key
        return text.replace(key, "***") if key and key != _NO_KEY else text

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                if self._needs_key:
                    raise ConfigError(
                        f"{self.who}: no API key for the LLM server at {self.base_url} (model '{self.model}'): "
                        f"set OPENAI_API_KEY or the {self.option} api_key, or point OPENAI_BASE_URL "
                        f"(or the {self.option} base_url) at an OpenAI-compatible server"
                    )
                self._client = _make_client(self.base_url, self._api_key, self.config.timeout, self.config.max_retries)
            return self._client

    def complete(self, messages: list[dict[str, str]], *, n: int = 1, temperature: float | None = None) -> list[str]:
        """``n`` replies: one request for all of them, or one request each when the server ignores ``n``."""
        _check_n(n, self.who)
        temperature = self.config.temperature if temperature is None else temperature
        client = self._get_client()
        replies: list[str] = []
        while len(replies) < n:
            wanted = n - len(replies) if self._n_honoured is not False else 1
            got = self._request(client, messages, wanted, temperature)
            if wanted > 1:
                self._n_honoured = len(got) >= wanted
            replies.extend(got)
        return replies[:n]

    def _request(self, client: Any, messages: list[dict[str, str]], n: int, temperature: float) -> list[str]:
        import openai

        c = self.config
        options: dict[str, Any] = {"model": self.model, "temperature": temperature}
        if c.max_tokens is not None:
            options["max_tokens"] = c.max_tokens
        if n > 1:
            options["n"] = n
        if c.stop:
            options["stop"] = list(c.stop)
        try:
            if c.style == "chat":
                response = client.chat.completions.create(messages=messages, **options)
            else:
                response = client.completions.create(prompt=flatten(messages), **options)
        except openai.OpenAIError as e:
            raise self._failure(e) from None
        except ValueError as e:  # a body that is not JSON, or not the expected JSON
            raise ServiceError(self._scrub(f"{self._where} sent an answer that is not JSON: {e}")) from None
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise ServiceError(self._scrub(f"{self._where} sent an answer with no choices: {str(response)[:200]!r}"))
        texts = []
        for choice in sorted(choices, key=lambda ch: getattr(ch, "index", 0) or 0):
            if c.style == "chat":
                message = getattr(choice, "message", None)
                text = getattr(message, "content", None)
            else:
                text = getattr(choice, "text", None)
            texts.append(text if isinstance(text, str) else "")
        return texts

    def _failure(self, e: Exception) -> ServiceError:
        """A clear error naming the server and the model; never the key."""
        import openai

        where = self._where
        if isinstance(e, openai.APITimeoutError):
            message = f"{where} did not answer within {self.config.timeout:g} s ({self.option} timeout)"
        elif isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e.__context__
            detail = f": {cause}" if cause is not None and str(cause) else ""
            message = f"{where} could not be reached{detail}"
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
            message = (
                f"{where} is rate limiting requests (HTTP 429) after {self.config.max_retries} retries: {e.message}"
            )
        elif isinstance(e, openai.APIStatusError):
            message = f"{where} answered HTTP {e.status_code}: {e.message}"
            if e.status_code in PER_REQUEST_STATUSES:
                return ServiceError(self._scrub(message), per_request=True)
        elif isinstance(e, openai.APIResponseValidationError):
            message = f"{where} sent an answer that is not a completion: {e.message}"
        else:
            message = f"{where} failed: {type(e).__name__}: {e}"
        return ServiceError(self._scrub(message))


def _make_client(base_url: str, api_key: str, timeout: float, max_retries: int) -> Any:
    from openai import OpenAI as _OpenAI

    class OpenAI(_OpenAI):  # the class name goes into the User-Agent header
        """The openai client, with every wait between tries capped (a long Retry-After included)."""

        def _calculate_retry_timeout(self, *args: Any, **kwargs: Any) -> float:
            return min(float(super()._calculate_retry_timeout(*args, **kwargs)), MAX_RETRY_WAIT)

    return OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)


# --- local causal LMs -----------------------------------------------------------------


def _looks_like_path(model: str) -> bool:
    return os.path.isabs(model) or model.startswith(("./", "../", "~", ".\\", "..\\")) or model in (".", "..")


def _missing_weights(e: BaseException) -> bool:
    from visprog.running.hub import _is_missing_weights

    if _is_missing_weights(e):
        return True
    try:
        from huggingface_hub.errors import HFValidationError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    return isinstance(e, HFValidationError)


class TransformersBackend:
    """A causal LM run in this process (hub id or folder), loaded on first use, once.

    The prompt is the tokenizer's chat template when it has one, else
    :func:`flatten`. Greedy decoding at temperature 0 (deterministic: ``n``
    copies of one reply), sampling otherwise. Only the new tokens are decoded;
    the text ends before the first stop string.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        stop: list[str] | None = None,
    ) -> None:
        if not model:
            raise ConfigError(f"{_WHO}: the local model is empty: give a hub id or a folder")
        if max_new_tokens < 1:
            raise ConfigError(f"{_WHO}: max_new_tokens must be at least 1, got {max_new_tokens!r}")
        if temperature < 0:
            raise ConfigError(f"{_WHO}: temperature must be 0 or more, got {temperature!r}")
        self.model = model
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.stop = [s for s in stop or [] if s]
        self._loaded: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        source = os.path.abspath(os.path.expanduser(self.model)) if os.path.isdir(self.model) else self.model
        return f"transformers:{source}"

    def __repr__(self) -> str:
        return f"TransformersBackend({self.identity!r})"

    def _load(self) -> tuple[Any, Any]:
        """The model (on its device, in eval mode) and the tokenizer, loaded once."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load_now()
            return self._loaded

    def _load_now(self) -> tuple[Any, Any]:
        from visprog.running.hub import _offline
        from visprog.running.runtime import resolve_device

        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise ConfigError(
                f"{_WHO}: a local model needs torch and transformers: pip install 'visprog[models]' ({e})"
            ) from e
        source = os.path.expanduser(self.model)
        fetch = f"hf download {self.model}"
        if _looks_like_path(self.model) or os.path.isdir(source):
            fetch = f"hf download <model id> --local-dir {self.model}"
        if _looks_like_path(self.model) and not os.path.isdir(source):
            raise ModelUnavailableError(_WHO, self.model, "the folder does not exist", fetch)
        folder = os.path.isdir(source)
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(source)
            tokenizer: Any = AutoTokenizer.from_pretrained(source)
        except Exception as e:
            # a folder without the files (transformers says so with OSError or ValueError)
            if not (_missing_weights(e) or (folder and isinstance(e, ValueError))):
                raise
            if folder:
                reason = f"the folder has no usable model files ({type(e).__name__}: {e})"
            elif _offline():
                reason = "it is not in the Hugging Face cache and HF_HUB_OFFLINE=1"
            else:
                reason = "it is not in the Hugging Face cache and the hub could not be reached"
            raise ModelUnavailableError(_WHO, self.model, reason, fetch) from e
        where = "the local planner's device: [llm] device, or TransformersBackend(device=...)"
        model.to(resolve_device(self.device, source=where))
        model.eval()
        return model, tokenizer

    def _prompt(self, tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, bool]:
        """The prompt text, and whether it came from the chat template (which brings its own special tokens)."""
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return str(text), True
        return flatten(messages), False

    def complete(self, messages: list[dict[str, str]], *, n: int = 1, temperature: float | None = None) -> list[str]:
        import torch

        _check_n(n)
        temperature = self.temperature if temperature is None else temperature
        if temperature < 0:
            raise ValueError(f"{_WHO}: temperature must be 0 or more, got {temperature!r}")
        model, tokenizer = self._load()
        text, templated = self._prompt(tokenizer, messages)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not templated).to(model.device)
        prompt_length = int(inputs["input_ids"].shape[1])
        sample = temperature > 0
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": sample}
        if sample:
            options.update(temperature=temperature, num_return_sequences=n)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is not None:
            options["pad_token_id"] = pad
        if self.stop:
            options["stopping_criteria"] = _stop_criteria(tokenizer, self.stop, prompt_length)
        with torch.inference_mode():
            output = model.generate(**inputs, **options)
        texts = [self._cut(t) for t in tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)]
        return texts if sample else texts[:1] * n

    def _cut(self, text: str) -> str:
        """``text`` up to the first stop string."""
        ends = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[: min(ends)] if ends else text


def _stop_criteria(tokenizer: Any, stop: list[str], prompt_length: int) -> Any:
    """Generation ends for a sequence once its new text holds a stop string."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            done = [any(s in t for s in stop) for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopStrings()])


# --- choosing a backend ---------------------------------------------------------------

_SERVER_OPTIONS = {f.name for f in fields(LLMConfig)} - {"model", "base_url", "api_key", "style"}
_LOCAL_OPTIONS = {"device", "max_new_tokens", "max_tokens", "temperature", "stop"}


def backend_from_options(
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    style: str = "chat",
    local: str | None = None,
    **kwargs: Any,
) -> LLMBackend:
    """The backend for these options: ``local`` (a hub id or folder) runs a model in this process,
    otherwise an OpenAI-compatible server.

    ``kwargs`` are the other fields of :class:`LLMConfig` (``temperature``,
    ``max_tokens``, ``stop``, ``timeout``, ``max_retries``) or, with ``local``,
    ``temperature``, ``max_tokens`` (or ``max_new_tokens``), ``stop`` and
    ``device``. An option given as ``None`` takes its default; an unknown one
    is a :class:`ConfigError`.
    """
    given = {k: v for k, v in kwargs.items() if v is not None}
    if style not in STYLES:
        raise ConfigError(f"{_WHO}: style must be one of {', '.join(STYLES)}, got {style!r}")
    if local:
        clash = [name for name, value in (("model", model), ("base_url", base_url), ("api_key", api_key)) if value]
        if clash:
            raise ConfigError(
                f"{_WHO}: a local model ({local!r}) runs in this process: {', '.join(clash)} "
                "cannot be given with it (they choose an LLM server)"
            )
        unknown = sorted(set(given) - _LOCAL_OPTIONS)
        if unknown:
            raise ConfigError(
                f"{_WHO}: option(s) {', '.join(unknown)} do not apply to a local model "
                f"(known: {', '.join(sorted(_LOCAL_OPTIONS))})"
            )
        if "max_tokens" in given and "max_new_tokens" in given:
            raise ConfigError(f"{_WHO}: give max_tokens or max_new_tokens, not both")
        if "max_tokens" in given:
            given["max_new_tokens"] = given.pop("max_tokens")
        return TransformersBackend(local, **given)
    unknown = sorted(set(given) - _SERVER_OPTIONS)
    if unknown:
        raise ConfigError(
            f"{_WHO}: option(s) {', '.join(unknown)} do not apply to an LLM server "
            f"(known: {', '.join(sorted(_SERVER_OPTIONS))})"
        )
    return OpenAIBackend(LLMConfig(model=model, base_url=base_url, api_key=api_key, style=style, **given))
