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

Modules also come from plain Python files (:func:`load_plugin_files`): the command line's ``--plugin FILE.py``,
a config file's ``plugins = [...]`` and ``$VISPROG_PLUGIN_PATH`` (:func:`plugin_path`). Each file is imported
under a module name of its own and every ``ModuleSpec`` in it is registered; a file already loaded into a
registry is skipped. A file that is missing, cannot be imported (the error names the file and line where the
exception was raised), declares no module or takes a registered module's name is a :class:`PluginError`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import threading
import traceback
import types as pytypes
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from visprog.errors import RegistrationError
from visprog.language.signatures import ModuleSpec, Registry

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV",
    "PLUGIN_PATH_ENV",
    "PluginError",
    "default_registry",
    "load_plugin_files",
    "load_plugins",
    "plugin_path",
    "plugins_enabled",
    "specs_in",
]

ENTRY_POINT_GROUP = "visprog.modules"
#: the distribution whose entry points are the built-in modules
BUILTIN_DISTRIBUTION = "visprog"
#: set to 0 (or false, no, off) to load the built-in modules only
PLUGINS_ENV = "VISPROG_PLUGINS"
#: Python files of modules, and folders of them (every ``*.py`` in the folder), separated by ``os.pathsep``
PLUGIN_PATH_ENV = "VISPROG_PLUGIN_PATH"


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


def plugin_path(value: str | None = None) -> list[Path]:
    """The Python files ``value`` names (default: ``$VISPROG_PLUGIN_PATH``), in order: each entry a file, or a
    folder standing for every ``*.py`` file in it (not in its subfolders), sorted by name. Entries are separated
    by ``os.pathsep``; empty ones are skipped. An entry that does not exist is a :class:`PluginError`."""
    if value is None:
        value = os.environ.get(PLUGIN_PATH_ENV, "")
    files: list[Path] = []
    for entry in value.split(os.pathsep):
        if not entry.strip():
            continue
        path = Path(entry).expanduser()
        if path.is_dir():
            files.extend(sorted(p for p in path.glob("*.py") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise PluginError(f"${PLUGIN_PATH_ENV}: no such file or folder: {entry}")
    return files


def load_plugin_files(
    registry: Registry, paths: Iterable[str | os.PathLike[str]], *, source: str = "plugin file"
) -> list[Path]:
    """Import each Python file of ``paths`` and register every ``ModuleSpec`` in it into ``registry``.

    Idempotent: a file already loaded into ``registry`` (by its resolved path) is skipped. Returns the files
    loaded by this call. ``source`` says where the paths came from (``--plugin``, a config file) in errors:
    a missing file, an exception while importing it (with the file and line where it was raised), a file
    that declares no module, or a module whose name is taken are each a :class:`PluginError`; its modules
    are then left out, and the files before it stay loaded.
    """
    loaded = []
    for given in paths:
        path = Path(given).expanduser()
        where = f"plugin file {path}" + (f" ({source})" if source != "plugin file" else "")
        if not path.is_file():
            raise PluginError(f"{where}: " + ("a folder, not a Python file" if path.is_dir() else "no such file"))
        resolved = path.resolve()
        key = f"file:{resolved}"
        with registry.lock:
            if key in registry.loaded_plugins:
                continue
            name = _file_module_name(resolved)
            module = _import_file(path, name, where)
            specs = [v for v in vars(module).values() if isinstance(v, ModuleSpec)]
            try:
                if not specs:
                    raise RegistrationError(f"{where}: declares no module (decorate a function with @visprog.module)")
                registry.register_all(specs, source=f"plugin file {path}")
            except RegistrationError as e:  # a name taken: by a built-in module, a plugin, another file
                sys.modules.pop(name, None)
                message = str(e) if str(e).startswith(where) else f"{where}: {e}"
                raise PluginError(message, key=key) from e
            registry.loaded_plugins.add(key)
            loaded.append(path)
    return loaded


def _file_module_name(path: Path) -> str:
    """A module name of its own for the file ``path``: its stem and a hash of its full path."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"visprog_plugin_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"


def _import_file(path: Path, name: str, where: str) -> pytypes.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RegistrationError(f"{where}: not a Python file Python can import (give it the .py suffix)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: dataclasses, pickling and typing look the module up
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # anything the file's code raises
        sys.modules.pop(name, None)
        tb = e.__traceback__  # from the file's own first frame on: not the frames of this import
        while tb is not None and not _same_file(tb.tb_frame.f_code.co_filename, path):
            tb = tb.tb_next
        if tb is not None:
            e.__traceback__ = tb
        raise PluginError(f"{where}: {_raised(e, path)}") from e
    return module


def _same_file(filename: str, path: Path) -> bool:
    return not filename.startswith("<") and os.path.abspath(filename) == os.path.abspath(path)


def _raised(e: BaseException, path: Path) -> str:
    """``Type: message (raised at FILE:LINE)``; raised below the file's own code (in a library it calls), the
    line of the file too."""
    if isinstance(e, SyntaxError) and e.filename:
        place = f"{e.filename}:{e.lineno}" + (f":{e.offset}" if e.offset else "")
        return f"{type(e).__name__}: {e.msg} (at {place})"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
    own = [f for f in frames if _same_file(f.filename, path)]
    if not frames:
        return f"{type(e).__name__}: {e}"
    place = f"{frames[-1].filename}:{frames[-1].lineno}"
    if own and own[-1] is not frames[-1]:
        place += f", called from {own[-1].filename}:{own[-1].lineno}"
    return f"{type(e).__name__}: {e} (raised at {place})"


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
