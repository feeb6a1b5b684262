"""Choosing an LLM client from options: a local model (``local=``) or an OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from visprog.errors import ConfigError, did_you_mean
from visprog.llm.base import PLANNER, LLMClient
from visprog.llm.constrained import CONSTRAIN_MODES
from visprog.llm.images import check_see_image, check_side
from visprog.llm.local import TransformersClient
from visprog.llm.server import STYLES, LLMConfig, OpenAIClient, check_grammar_format

__all__ = [
    "LOCAL_OPTIONS",
    "SEE_IMAGE_OPTIONS",
    "SERVER_OPTIONS",
    "SETTINGS",
    "check_constrain",
    "check_settings",
    "client_from_options",
]

#: Options of an OpenAI-compatible server besides model, base_url, api_key and style.
SERVER_OPTIONS = frozenset({f.name for f in fields(LLMConfig)} - {"model", "base_url", "api_key", "style"})
#: Options of a local model.
LOCAL_OPTIONS = frozenset({"device", "dtype", "max_new_tokens", "max_tokens", "temperature", "stop"})


#: The planner's settings for sending the input images to the model (:mod:`visprog.llm.images`).
SEE_IMAGE_OPTIONS = frozenset({"see_image", "see_image_side"})
#: Every key an ``[llm]`` table of a config file may hold (``examples``, ``constrain``: the planner's, not the
#: client's).
SETTINGS = frozenset({"model", "base_url", "api_key", "style", "local", "examples", "constrain"})
SETTINGS |= SERVER_OPTIONS | LOCAL_OPTIONS | SEE_IMAGE_OPTIONS


def check_constrain(value: Any, source: str = PLANNER) -> str:
    """``value`` if it is one of :data:`CONSTRAIN_MODES`; else a :class:`ConfigError` naming the setting
    and ``source``."""
    if value not in CONSTRAIN_MODES:
        hint = did_you_mean(value, CONSTRAIN_MODES) if isinstance(value, str) else ""
        raise ConfigError(
            f"{source}: constrain (--constrain, [llm] constrain) must be one of {', '.join(CONSTRAIN_MODES)}, "
            f"got {value!r}{hint}"
        )
    return str(value)


def check_settings(settings: Mapping[str, Any], source: str) -> None:
    """Refuse an unknown key of an ``[llm]`` table with a suggestion, and a value that is not one of a setting's,
    naming ``source`` (the config file)."""
    for key in settings:
        if key not in SETTINGS:
            known = ", ".join(sorted(SETTINGS))
            hint = did_you_mean(key, sorted(SETTINGS))
            raise ConfigError(f"{source}: [llm] has no setting '{key}'{hint}; its settings: {known}")
    if "see_image" in settings:
        check_see_image(settings["see_image"], f"{source}: [llm]")
    if "see_image_side" in settings:
        check_side(settings["see_image_side"], f"{source}: [llm]")
    if "constrain" in settings:
        check_constrain(settings["constrain"], f"{source}: [llm]")
    if "grammar_format" in settings:
        check_grammar_format(settings["grammar_format"], f"{source}: [llm]")


def client_from_options(
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    style: str = "chat",
    local: str | None = None,
    **kwargs: Any,
) -> LLMClient:
    """The client for these options: ``local`` (a hub id or folder) runs a model in this process,
    otherwise an OpenAI-compatible server.

    ``kwargs`` are the other fields of :class:`~visprog.llm.server.LLMConfig`
    (``temperature``, ``max_tokens``, ``stop``, ``timeout``, ``max_retries``, ``grammar_format``)
    or, with ``local``, ``temperature``, ``max_tokens`` (or ``max_new_tokens``),
    ``stop``, ``device`` and ``dtype``. An option given as ``None`` takes its
    default; an unknown one is a :class:`ConfigError`.
    """
    given = {k: v for k, v in kwargs.items() if v is not None}
    if style not in STYLES:
        raise ConfigError(f"{PLANNER}: style must be one of {', '.join(STYLES)}, got {style!r}")
    if local:
        clash = [name for name, value in (("model", model), ("base_url", base_url), ("api_key", api_key)) if value]
        if clash:
            raise ConfigError(
                f"{PLANNER}: a local model ({local!r}) runs in this process: {', '.join(clash)} "
                "cannot be given with it (they choose an LLM server)"
            )
        unknown = sorted(set(given) - LOCAL_OPTIONS)
        if unknown:
            raise ConfigError(
                f"{PLANNER}: option(s) {', '.join(unknown)} do not apply to a local model "
                f"(known: {', '.join(sorted(LOCAL_OPTIONS))})"
            )
        if "max_tokens" in given and "max_new_tokens" in given:
            raise ConfigError(f"{PLANNER}: give max_tokens or max_new_tokens, not both")
        if "max_tokens" in given:
            given["max_new_tokens"] = given.pop("max_tokens")
        return TransformersClient(local, **given)
    unknown = sorted(set(given) - SERVER_OPTIONS)
    if unknown:
        raise ConfigError(
            f"{PLANNER}: option(s) {', '.join(unknown)} do not apply to an LLM server "
            f"(known: {', '.join(sorted(SERVER_OPTIONS))})"
        )
    return OpenAIClient(LLMConfig(model=model, base_url=base_url, api_key=api_key, style=style, **given))
