"""Module options: settings of a module given outside the program, declared once.

A module declares the options it reads with their type, default and help
(``@module(options=[Option("nms_iou", float, 0.5, "...")])``); the config
file, ``--option`` and ``Runtime(modules=...)`` are validated against the
declarations, and the module reads a value with ``ctx.option(name)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from visprog.errors import ConfigError, RegistrationError
from visprog.language.tokens import is_name
from visprog.language.values import parse_bool

__all__ = ["Option", "OptionError", "check_options", "standard_options"]

#: what :func:`_convert` returns for a value that is not of the type
_MISSING: Any = object()


class OptionError(ConfigError, ValueError):
    """A module option that is unknown, or whose value does not fit its declaration; the message says
    where it was given (the config file, the command-line flag, ``Runtime(modules=...)``)."""


#: The types an option may declare, and how an error describes each.
_OPTION_TYPES: dict[Any, str] = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "a string",
    list[str]: "a list of strings (or one comma-separated string)",
}
_TRUE_WORDS = {"1", "on"}
_FALSE_WORDS = {"0", "off"}


@dataclass(frozen=True)
class Option:
    """A setting of a module given outside the program, declared once.

    ``type`` is ``bool``, ``int``, ``float``, ``str`` or ``list[str]``; a value is
    converted to it where it is read (the text of ``--option`` included).
    ``default`` is what the module uses when the option is not set; None means
    the module decides (say so in ``help``), and ``backend_defaults`` gives a
    default per backend. ``choices`` limits the values.
    """

    name: str
    type: Any
    default: Any = None
    help: str = ""
    backend_defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[Any, ...] = ()

    @property
    def type_name(self) -> str:
        """``float``, ``list[str]``, ...: the declared type as written."""
        return "list[str]" if self.type == list[str] else str(getattr(self.type, "__name__", self.type))

    def expected(self) -> str:
        """What a value must be, for error messages."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        return f"{_describe(self.type)} ({self.type_name})"

    def default_text(self) -> str:
        """The default as ``visprog modules`` shows it."""
        if self.backend_defaults:
            per = ", ".join(f"{v!r} for {b}" for b, v in self.backend_defaults.items())
            return per if self.default is None else f"{per}, else {self.default!r}"
        return "not set" if self.default is None else repr(self.default)

    def convert(self, value: Any) -> Any:
        """``value`` as the declared type; :class:`ValueError` saying what it must be when it cannot be."""
        out = _convert(self.type, value)
        if out is _MISSING:
            raise ValueError(f"must be {self.expected()}, got {value!r}")
        if self.choices and out not in self.choices:
            raise ValueError(f"must be {self.expected()}, got {value!r}")
        return out


def _describe(kind: Any) -> str:
    """How an error describes a value of ``kind``."""
    return next((text for t, text in _OPTION_TYPES.items() if t == kind), f"a {kind!r}")


def _convert(kind: Any, value: Any) -> Any:
    """``value`` as ``kind``, or ``_MISSING`` when it is not one."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS | _FALSE_WORDS:
                return word in _TRUE_WORDS
            parsed = parse_bool(word)
            return _MISSING if parsed is None else parsed
        return _MISSING
    if kind is int:
        if isinstance(value, bool):
            return _MISSING
        if isinstance(value, str):
            try:
                value = float(value.strip()) if any(c in value for c in ".eE") else int(value.strip())
            except ValueError:
                return _MISSING
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _MISSING
    if kind is float:
        if isinstance(value, bool):
            return _MISSING
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                return _MISSING
        return _MISSING
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return _MISSING
    if kind == list[str]:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, int) and not isinstance(value, bool):
            return [str(value)]
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in value
        ):
            return [str(v) for v in value]
        return _MISSING
    return _MISSING


def standard_options(
    declared: Sequence[Option], backends: Mapping[str, str | None], default_backend: str | None
) -> list[Option]:
    """``backend`` and ``model`` for a module with backends (a declared one keeps its help), then the rest."""
    if not backends:
        return list(declared)
    by_name = {o.name: o for o in declared}
    backend = Option(
        "backend",
        str,
        default_backend,
        by_name["backend"].help if "backend" in by_name else "which implementation runs the module",
        choices=tuple(backends),
    )
    model = Option(
        "model",
        str,
        None,
        by_name["model"].help if "model" in by_name else "a hub id or a local folder (default: the backend's model)",
        backend_defaults={b: m for b, m in backends.items() if m},
    )
    return [backend, model, *(o for o in declared if o.name not in ("backend", "model"))]


def check_options(where: str, options: Sequence[Option], backends: Mapping[str, str | None]) -> None:
    """Raise :class:`RegistrationError` (``where`` names the module) at the first wrong declaration: a name
    that is not an identifier or is declared twice, a type that is not supported, a default that does not
    fit the type, a per-backend default for a backend the module does not have."""
    seen: set[str] = set()
    for o in options:
        if not isinstance(o, Option):
            raise RegistrationError(f"{where}: options= takes Option(name, type, default, help), got {o!r}")
        what = f"{where}: option '{o.name}'"
        if not isinstance(o.name, str) or not (is_name(o.name) and o.name[0].isalpha()):
            raise RegistrationError(f"{where}: option name {o.name!r} must be letters, digits and underscores")
        if o.name in seen:
            raise RegistrationError(f"{what} is declared twice")
        seen.add(o.name)
        if not any(o.type == t for t in _OPTION_TYPES):
            raise RegistrationError(f"{what}: type {o.type!r} is not one of bool, int, float, str, list[str]")
        if o.name in ("backend", "model") and backends and o.type is not str:
            raise RegistrationError(f"{what} must be of type str")
        defaults = [("default", o.default)] + [(f"default for backend '{b}'", v) for b, v in o.backend_defaults.items()]
        for label, value in defaults:
            if value is None:
                continue
            try:
                o.convert(value)
            except ValueError as e:
                raise RegistrationError(f"{what}: the {label} {e.args[0]}") from None
        unknown = set(o.backend_defaults) - set(backends)
        if unknown:
            raise RegistrationError(f"{what}: backend_defaults names unknown backend(s) {', '.join(sorted(unknown))}")
