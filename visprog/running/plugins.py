"""Plugins: modules registered through the ``visprog.modules`` entry-point group.

Built-in modules register exactly as third-party plugins do. An entry point
names a Python module (every :class:`~visprog.language.signatures.ModuleSpec`
in it is registered, in definition order), a single ``ModuleSpec``, or a list
of them. Loading is idempotent: an entry point already loaded into a registry
is skipped.
"""

from __future__ import annotations

import importlib.metadata
import threading
import types as pytypes
from collections.abc import Iterable
from typing import Any

from visprog.errors import RegistrationError
from visprog.language.signatures import ModuleSpec, Registry

__all__ = ["ENTRY_POINT_GROUP", "default_registry", "load_plugins", "specs_in"]

ENTRY_POINT_GROUP = "visprog.modules"


def load_plugins(
    registry: Registry, entry_points: Iterable[importlib.metadata.EntryPoint] | None = None
) -> list[str]:
    """Register every module of the ``visprog.modules`` entry points into ``registry``. Idempotent.

    Returns the names of the entry points loaded by this call.
    """
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    # Built-ins first, so a plugin can never take a built-in's name, whatever sys.path says.
    ordered = sorted(entry_points, key=lambda ep: _dist_name(ep) != "visprog")
    loaded = []
    for ep in ordered:
        dist = _dist_name(ep)
        key = f"{dist or '?'}:{ep.name}={ep.value}"
        with registry.lock:
            if key in registry.loaded_plugins:
                continue
            source = f"plugin '{ep.name}'" + (f" of {dist}" if dist else "")
            try:
                obj = ep.load()
            except RegistrationError as e:
                raise RegistrationError(f"{source}: {e}") from e
            except Exception as e:
                raise RegistrationError(f"{source}: cannot import {ep.value}: {type(e).__name__}: {e}") from e
            registry.register_all(specs_in(obj, source), source=source)
            registry.loaded_plugins.add(key)
            loaded.append(ep.name)
    return loaded


def _dist_name(ep: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) if dist is not None else None


def specs_in(obj: Any, source: str) -> list[ModuleSpec]:
    if isinstance(obj, ModuleSpec):
        return [obj]
    if isinstance(obj, pytypes.ModuleType):
        specs = [v for v in vars(obj).values() if isinstance(v, ModuleSpec)]
        if not specs:
            raise RegistrationError(f"{source}: {obj.__name__} declares no modules")
        return specs
    if isinstance(obj, (list, tuple)) and all(isinstance(v, ModuleSpec) for v in obj):
        return list(obj)
    raise RegistrationError(
        f"{source}: the entry point must name a Python module or a @visprog.module, got {type(obj).__name__}"
    )

_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry with built-in modules and installed plugins loaded."""
    global _default
    with _default_lock:
        if _default is None:
            reg = Registry()
            load_plugins(reg)
            _default = reg
        return _default
