"""Plugins: modules registered through the ``visprog.modules`` entry-point group.

Built-in modules register exactly as third-party plugins do. An entry point
names a Python module (every :class:`~visprog.language.signatures.ModuleSpec`
in it is registered, in definition order), a single ``ModuleSpec``, or a list
of them. Loading is idempotent: an entry point already loaded into a registry
(or already found broken) is skipped.

A third-party plugin that cannot be loaded (its import fails, a declaration is
wrong, a name is taken) does not stop the others: the failure is recorded in
``registry.plugin_errors`` as a :class:`PluginError` naming the entry point
and the cause, and its modules are left out. A built-in module that cannot be
loaded is a broken installation, and an error. ``VISPROG_PLUGINS=0`` turns
third-party plugins off (built-ins still load).
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
import types as pytypes
from collections.abc import Iterable
from typing import Any

from visprog.errors import RegistrationError
from visprog.language.signatures import ModuleSpec, Registry

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV",
    "PluginError",
    "default_registry",
    "load_plugins",
    "plugins_enabled",
    "specs_in",
]

ENTRY_POINT_GROUP = "visprog.modules"
#: the distribution whose entry points are the built-in modules
BUILTIN_DISTRIBUTION = "visprog"
#: set to 0 (or false, no, off) to load the built-in modules only
PLUGINS_ENV = "VISPROG_PLUGINS"


class PluginError(RegistrationError):
    """A plugin's entry point that could not be loaded: which one, and why."""

    def __init__(self, message: str, *, entry_point: str = "", distribution: str | None = None, key: str = "") -> None:
        super().__init__(message)
        #: ``name = value`` as the distribution's entry_points.txt writes it
        self.entry_point = entry_point
        self.distribution = distribution
        self.key = key


def plugins_enabled() -> bool:
    """False when ``$VISPROG_PLUGINS`` turns third-party plugins off (0, false, no, off)."""
    return os.environ.get(PLUGINS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def load_plugins(
    registry: Registry,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    *,
    third_party: bool | None = None,
    strict: bool = False,
) -> list[str]:
    """Register every module of the ``visprog.modules`` entry points into ``registry``. Idempotent.

    Returns the names of the entry points loaded by this call. A third-party entry point that fails
    is recorded in ``registry.plugin_errors`` (a :class:`PluginError`) and skipped, unless ``strict``,
    when it is raised (handy to test a plugin). A failing built-in always raises.

    ``third_party`` (default: ``$VISPROG_PLUGINS``, on unless 0) loads the entry points of other
    distributions than visprog; with False only the built-in modules load.
    """
    if third_party is None:
        third_party = plugins_enabled()
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    # Built-ins first, so a plugin can never take a built-in's name, whatever sys.path says.
    ordered = sorted(entry_points, key=lambda ep: _dist_name(ep) != BUILTIN_DISTRIBUTION)
    loaded = []
    for ep in ordered:
        dist = _dist_name(ep)
        builtin = dist == BUILTIN_DISTRIBUTION
        if not builtin and not third_party:
            continue
        key = f"{dist or '?'}:{ep.name}={ep.value}"
        with registry.lock:
            if key in registry.loaded_plugins or any(getattr(e, "key", None) == key for e in registry.plugin_errors):
                continue
            source = f"plugin '{ep.name}'" + (f" of {dist}" if dist else "")
            try:
                registry.register_all(specs_in(_load(ep, source), source), source=source)
            except RegistrationError as e:
                if builtin:
                    raise RegistrationError(
                        f"the built-in modules of {source} cannot be loaded, so this visprog installation is "
                        f"broken (reinstall it): {e}"
                    ) from e
                error = PluginError(str(e), entry_point=f"{ep.name} = {ep.value}", distribution=dist, key=key)
                error.__cause__ = e.__cause__ or e  # the exception itself (an ImportError, say), for a debugger
                if strict:
                    raise error from error.__cause__
                registry.plugin_errors.append(error)
                continue
            registry.loaded_plugins.add(key)
            loaded.append(ep.name)
    return loaded


def _load(ep: importlib.metadata.EntryPoint, source: str) -> Any:
    """What the entry point names; every failure becomes a :class:`RegistrationError` naming it."""
    try:
        return ep.load()
    except RegistrationError as e:
        raise RegistrationError(f"{source}: {e}") from e
    except Exception as e:  # anything a plugin's import can raise; the rest of visprog keeps working
        raise RegistrationError(f"{source}: cannot import {ep.value}: {type(e).__name__}: {e}") from e


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
    """The process-wide registry with built-in modules and installed plugins loaded.

    Plugins that could not be loaded are in its ``plugin_errors``.
    """
    global _default
    with _default_lock:
        if _default is None:
            reg = Registry()
            load_plugins(reg)
            _default = reg
        return _default
