"""What modules share while they run: device, dtype, the model pool, per-run caches.

Nothing here imports torch at import time. The device is resolved once, on
first use (cuda, then mps, then cpu) unless it is set explicitly; a device set
explicitly is checked then (``--device cuda`` without CUDA is a
:class:`~visprog.errors.ConfigError` at the first model load, not an assertion
deep inside torch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from visprog.errors import ConfigError, did_you_mean
from visprog.language.signatures import ModuleSpec, Option, OptionError, Registry
from visprog.running.events import Event, Listener
from visprog.running.plugins import default_registry, load_plugin_files

__all__ = [
    "CONFIG_KEYS",
    "Context",
    "ModelPool",
    "RunCache",
    "Runtime",
    "check_device",
    "config_file",
    "config_plugins",
    "default_runtime",
    "read_config",
    "resolve_device",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)


#: Where a device can be asked for, as the device errors name it.
DEVICE_SOURCES = "--device, the config file's device = ..., or Runtime(device_request=...)"


def resolve_device(requested: str | None = None, *, source: str = DEVICE_SOURCES) -> str:
    """The device to run models on: ``requested`` if given, else cuda, mps, cpu in that order.

    A requested device is checked against this machine and this torch (:func:`check_device`);
    ``source`` says where it was asked for, for the error.
    """
    if requested and requested != "auto":
        check_device(requested, source=source)
        return requested
    try:
        import torch
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def check_device(requested: str, *, source: str = DEVICE_SOURCES) -> None:
    """Raise :class:`ConfigError` when torch cannot place a model on ``requested`` here.

    A name torch does not know, ``cuda``/``cuda:N`` without CUDA or with fewer than N+1 GPUs,
    and ``mps`` when it is not available are refused with what was asked, what is available
    and what to do. Without torch there is nothing to check (loading a model says so).
    """
    try:
        import torch
    except ImportError:
        return
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"device '{requested}' was requested ({source}) but torch does not know that device: "
            "use cuda, cuda:N, mps, cpu or auto (the best available)"
        ) from None
    asked = f"device '{requested}' was requested ({source})"
    version = str(torch.__version__)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            if not getattr(torch.version, "cuda", None):
                raise ConfigError(
                    f"{asked} but this torch ({version}) has no CUDA: use --device cpu, or install a "
                    "CUDA build of torch (https://pytorch.org/get-started/locally/; with the Makefile: "
                    "make clean setup TORCH=...)"
                )
            raise ConfigError(
                f"{asked} but this torch ({version}, CUDA {torch.version.cuda}) finds no CUDA GPU "
                "(none installed, no working driver, or hidden by CUDA_VISIBLE_DEVICES): use --device cpu, "
                "or run on a machine with an NVIDIA GPU"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            have = ", ".join(f"cuda:{i}" for i in range(count))
            raise ConfigError(
                f"{asked} but this machine has {count} CUDA GPU{'s' if count != 1 else ''} ({have}): "
                f"use --device cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}, or --device cuda"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            why = "is not built with MPS" if mps is None or not mps.is_built() else "finds no MPS device"
            raise ConfigError(
                f"{asked} but this torch ({version}) {why} (MPS needs an Apple-silicon Mac with macOS 12.3 "
                "or later): use --device cpu"
            )


#: the top-level keys of a config file
CONFIG_KEYS = ("device", "half", "plugins", "modules", "llm")


def config_file(path: str | os.PathLike[str] | None = None) -> str | os.PathLike[str] | None:
    """The config file to read: ``path``, else ``$VISPROG_CONFIG``, else ``~/.config/visprog/config.toml`` when
    it exists, else None (no config file)."""
    if path is None:
        path = os.environ.get("VISPROG_CONFIG") or None
        default = Path.home() / ".config" / "visprog" / "config.toml"
        if path is None and default.is_file():
            path = default
    return path


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The config file's top-level table; a :class:`ConfigError` when it cannot be read, is not TOML or has a
    key that is not one of :data:`CONFIG_KEYS`."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    unknown = set(data) - set(CONFIG_KEYS)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}; "
            "expected device, half, plugins, [modules.NAME], [llm]"
        )
    _check_types(data, CONFIG_TYPES, f"config file {path}: ")
    _check_types(data.get("llm", {}), LLM_TYPES, f"config file {path}: [llm] ")
    return data


_TEXT = (str, "a string")
_WHOLE = (int, "a whole number")
_NUMBER = ((int, float), "a number")
#: What each top-level key of a config file holds (``plugins`` is checked with its files).
CONFIG_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "device": (str, 'a string, e.g. "cuda"'),
    "half": (bool, "true or false"),
    "modules": (dict, "tables, [modules.NAME]"),
    "llm": (dict, "a table, [llm]"),
}
#: What each setting of ``[llm]`` holds; what its values may be is checked where the settings are used (there too
#: the types of ``examples``, ``constrain``, ``grammar_format``, ``see_image`` and ``see_image_side``).
LLM_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    **dict.fromkeys(("model", "base_url", "api_key", "style", "local", "dtype", "device"), _TEXT),
    **dict.fromkeys(("max_tokens", "max_new_tokens", "max_retries", "max_reply_bytes"), _WHOLE),
    **dict.fromkeys(("temperature", "timeout"), _NUMBER),
    "stop": ((str, list), "a string or a list of strings"),
}


def _check_types(table: Mapping[str, Any], types: Mapping[str, tuple[Any, str]], where: str) -> None:
    """A :class:`ConfigError` naming the first key of ``table`` whose value is not of its type in ``types``."""
    for key, value in table.items():
        if key not in types:
            continue
        kind, said = types[key]
        wrong = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
        if key == "stop" and isinstance(value, list):
            wrong = not all(isinstance(v, str) for v in value)
        if wrong:
            got = type(value).__name__ if key == "api_key" else repr(value)  # a key is never shown, even a wrong one
            raise ConfigError(f"{where}{key} must be {said}, got {got}")


def config_plugins(path: str | os.PathLike[str] | None = None, registry: Registry | None = None) -> list[Path]:
    """Load the Python files of the config file's ``plugins = ["my_modules.py", ...]`` (paths relative to the
    config file; ``path`` as :meth:`Runtime.from_config` finds it) into ``registry`` (default: the default
    registry). Returns the files loaded by this call; a file loaded before is skipped."""
    path = config_file(path)
    plugins = _plugin_files(read_config(path), path) if path is not None else []
    if not plugins:
        return []
    reg = registry if registry is not None else default_registry()
    return load_plugin_files(reg, plugins, source=f"config file {path}: plugins")


def _plugin_files(data: Mapping[str, Any], path: str | os.PathLike[str] | None) -> list[Path]:
    """The config file's ``plugins``, each relative to the file's folder unless absolute."""
    plugins = data.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p.strip() for p in plugins):
        raise ConfigError(
            f'config file {path}: plugins must be a list of Python files, e.g. plugins = ["my_modules.py"], '
            f"got {plugins!r}"
        )
    folder = Path(path).parent if path is not None else Path()
    return [folder / Path(p).expanduser() for p in plugins]


class ModelPool:
    """Models loaded once per process, shared by key, loaded on first request.

    Each key has its own lock: threads asking for one model wait for a single
    load of it, while different models load at the same time.
    """

    def __init__(self) -> None:
        self._models: dict[Any, Any] = {}
        #: guards the dictionaries only, never held while a model loads
        self._lock = threading.Lock()
        self._key_locks: dict[Any, threading.Lock] = {}
        #: how many times each key was loaded (1 each, unless the pool was cleared)
        self.loads: dict[Any, int] = {}

    def get(self, key: Any, loader: Callable[[], T]) -> T:
        """The model stored under ``key``, calling ``loader()`` the first time only.

        A failed load stores nothing: the next request tries again.
        """
        with self._lock:
            if key in self._models:
                return self._models[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:  # loaded by the thread this one waited for
                    return self._models[key]
            model = loader()
            with self._lock:
                self._models[key] = model
                self.loads[key] = self.loads.get(key, 0) + 1
            return model

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._models

    def items(self) -> list[tuple[Any, Any]]:
        """The loaded models with their keys, in the order they loaded."""
        with self._lock:
            return list(self._models.items())

    def clear(self) -> None:
        """Forget every loaded model (the next request loads it again)."""
        with self._lock:
            self._models.clear()


class RunCache:
    """Per-run values keyed by an input (an image) and a name, computed once.

    Keys use the object's identity; the cache holds a reference to each key
    object so identities stay valid for the run.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[int, str], Any] = {}
        self._keep: dict[int, Any] = {}
        self.computed: dict[str, int] = {}

    def get(self, obj: Any, name: str, compute: Callable[[], T]) -> T:
        key = (id(obj), name)
        if key not in self._values:
            self._keep[id(obj)] = obj
            self._values[key] = compute()
            self.computed[name] = self.computed.get(name, 0) + 1
        return self._values[key]

    def clear(self) -> None:
        self._values.clear()
        self._keep.clear()


@dataclass
class Runtime:
    """Process-wide settings and the model pool.

    ``device`` is ``None`` or ``"auto"`` to pick cuda, mps, cpu in that order;
    ``half`` chooses float16 on a GPU (the default) and is ignored on the cpu.
    ``modules`` holds per-module options such as ``{"FaceDet": {"backend": "cascade"}}``,
    validated against the modules' declared options (``registry``'s, default: the default
    registry's) when the runtime is made: names become canonical, values their declared
    type, and an unknown module or option is an :class:`~visprog.language.options.OptionError`.
    """

    device_request: str | None = None
    half: bool = True
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: planner settings from a config file's [llm] table (model, base_url, style, temperature, ...)
    llm: dict[str, Any] = field(default_factory=dict)
    #: report model loads (and let download progress bars show) on standard error
    progress: bool = True
    pool: ModelPool = field(default_factory=ModelPool)
    #: the registry whose modules' options ``modules`` is checked against (None: the default registry)
    registry: Registry | None = field(default=None, repr=False, compare=False)
    _device: str | None = field(default=None, init=False, repr=False)
    #: who hears this runtime's model events now (:meth:`listening`), guarded by ``_listeners_lock``
    _listeners: list[Listener] = field(default_factory=list, init=False, repr=False, compare=False)
    _listeners_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.modules:
            self.modules = self.module_registry().validate_options(self.modules, "Runtime(modules=...)")

    @contextlib.contextmanager
    def listening(self, listener: Listener) -> Iterator[None]:
        """While the ``with`` block runs, ``listener(event)`` hears this runtime's model events
        (:class:`~visprog.running.events.ModelLoading`, ``ModelDownload``, ``ModelLoaded``).

        Several listeners may listen at once, from any thread (two requests of a server sharing one
        runtime): each hears every model event of the runtime while it listens. A listener runs on the
        thread that loads the model: keep it quick.
        """
        with self._listeners_lock:
            self._listeners.append(listener)
        try:
            yield
        finally:
            with self._listeners_lock:
                self._listeners.remove(listener)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every listener listening now (:meth:`listening`).

        A listener that raises is logged and skipped: it never breaks the model load that reports.
        """
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                logger.warning("a listener of %s events raised; the event is dropped for it", event.kind, exc_info=True)

    def module_registry(self) -> Registry:
        """The registry that declares the modules' options: ``registry``, else the default one."""
        return self.registry if self.registry is not None else default_registry()

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.device_request)
        return self._device

    @property
    def dtype_name(self) -> str:
        """``"float16"`` on a GPU when ``half`` is set, else ``"float32"``."""
        return "float16" if self.half and not self.device.startswith("cpu") else "float32"

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)

    def options(self, module: str) -> Mapping[str, Any]:
        """Options given for one module (canonical name), empty when none."""
        return self.modules.get(module, {})

    def set_option(self, module: str, key: str, value: Any, *, source: str = "Runtime.set_option") -> None:
        """Set one option of a module (any spelling of its name), converted to its declared type.

        None unsets it. An unknown module or option, or a value that does not fit, is an
        :class:`~visprog.language.options.OptionError` naming ``source`` (where the value came from).
        """
        spec = self.module_registry().resolve(module, source)
        if value is None:
            if spec.option(key) is None:
                spec.validate_option(key, value, source)  # an unknown option: the error with its suggestion
            self.modules.get(spec.name, {}).pop(key, None)
            return
        self.modules.setdefault(spec.name, {})[key] = spec.validate_option(key, value, source)

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str] | None = None, *, registry: Registry | None = None, **overrides: Any
    ) -> Runtime:
        """A runtime from a TOML config file (``--config``, ``$VISPROG_CONFIG``, or
        ``~/.config/visprog/config.toml`` when it exists)::

            device = "cuda"      # or "auto", "cpu", "mps", "cuda:1"
            half = true
            plugins = ["my_modules.py"]   # Python files of modules, relative to this file
            [modules.Loc]
            backend = "owlv2"
            model = "google/owlv2-base-patch16-ensemble"
            [llm]                # the planner (and List): any OpenAI-compatible server
            model = "qwen2.5:7b"
            base_url = "http://localhost:11434/v1"

        Every ``[modules.NAME]`` table is checked against the module's declared options (``registry``'s,
        default: the default registry's): an unknown module or option, or a value that does not fit its
        type, is an :class:`~visprog.language.options.OptionError` naming the file. The ``plugins`` files load
        into that registry first (:func:`config_plugins`). Keyword overrides that are not None win over the file.
        """
        unexpected = sorted(set(overrides) - {"device_request", "half"})
        if unexpected:
            said = ", ".join(f"'{k}'{did_you_mean(k, ['device_request', 'half'], cutoff=0.5)}" for k in unexpected)
            raise ConfigError(f"Runtime.from_config: unknown override(s) {said}; it takes device_request and half")
        path = config_file(path)
        data = read_config(path) if path is not None else {}
        tables = data.get("modules", {})
        if not isinstance(tables, dict):
            raise ConfigError(f"config file {path}: modules must be tables, [modules.NAME]")
        half = data.get("half", True)
        if not isinstance(half, bool):
            raise ConfigError(f"config file {path}: half must be true or false, got {half!r}")
        plugins = _plugin_files(data, path)
        reg = registry if registry is not None else default_registry() if tables or plugins else None
        if reg is not None and plugins:  # before the [modules.NAME] tables, which may set a plugin's options
            load_plugin_files(reg, plugins, source=f"config file {path}: plugins")
        modules = reg.validate_options(tables, f"config file {path}") if reg is not None else {}
        runtime = cls(
            device_request=data.get("device"),
            half=half,
            modules=modules,
            llm=dict(data.get("llm", {})),
            registry=registry,
        )
        if overrides.get("device_request") is not None:
            runtime.device_request = overrides["device_request"]
        if overrides.get("half") is not None:
            runtime.half = bool(overrides["half"])
        return runtime


@dataclass
class Context:
    """Handed to a module that declares a parameter annotated ``Context``.

    ``module`` is the canonical name of the module being run; ``backends``,
    ``default_backend`` and ``declared`` (its options) come from its declaration.
    """

    runtime: Runtime
    cache: RunCache
    module: str = ""
    backends: Mapping[str, str | None] = field(default_factory=dict)
    default_backend: str | None = None
    #: the module's declared options by name; None: looked up in the runtime's registry when read
    declared: Mapping[str, Option] | None = None

    #: marks this class for module signatures (visprog.language.signatures.CONTEXT_MARKER)
    __visprog_context__: ClassVar[bool] = True

    @property
    def pool(self) -> ModelPool:
        return self.runtime.pool

    @property
    def device(self) -> str:
        return self.runtime.device

    @property
    def options(self) -> Mapping[str, Any]:
        """The options set for this module (validated), without defaults; see :meth:`option`."""
        return self.runtime.options(self.module)

    def option(self, name: str) -> Any:
        """The value of one of this module's declared options: as set (config file, ``--option``,
        ``Runtime(modules=...)``), else its default for the chosen backend, else its default."""
        declared = self.declared
        if declared is None:
            spec = self.runtime.module_registry().get(self.module)
            declared = {o.name: o for o in spec.options} if spec is not None else {}
            self.declared = declared
        opt = declared.get(name)
        if opt is None:
            raise OptionError(f"{self.module} declares no option '{name}' (declare it in @module(options=[...]))")
        value = self.options.get(name)
        if value is not None:
            return value
        if opt.backend_defaults and self.backends:
            return opt.backend_defaults.get(self.backend, opt.default)
        return opt.default

    @property
    def backend(self) -> str:
        """The backend chosen for this module (``--backend``), else its default."""
        chosen = self.options.get("backend") or self.default_backend
        if chosen is None:
            raise ValueError(f"{self.module} has no backends")
        chosen = str(chosen)
        if self.backends and chosen not in self.backends:
            raise ValueError(f"unknown {self.module} backend '{chosen}'; choose one of {', '.join(self.backends)}")
        return chosen

    @property
    def model_id(self) -> str:
        """The model chosen for this module (``--model``), else its backend's default."""
        chosen = self.options.get("model") or self.backends.get(self.backend)
        if not chosen:
            raise ValueError(f"{self.module} backend '{self.backend}' needs no model")
        return str(chosen)

    def for_module(
        self,
        module: str | ModuleSpec,
        backends: Mapping[str, str | None] | None = None,
        default_backend: str | None = None,
    ) -> Context:
        """The context for one module: from its declaration, or from its name, backends and default backend."""
        if isinstance(module, ModuleSpec):
            declared = {o.name: o for o in module.options}
            return Context(
                self.runtime, self.cache, module.name, dict(module.backends), module.default_backend, declared
            )
        return Context(self.runtime, self.cache, module, dict(backends or {}), default_backend)


_default_runtime: Runtime | None = None


def default_runtime() -> Runtime:
    """The process-wide runtime: one model pool shared by every run that does not bring its own."""
    global _default_runtime
    if _default_runtime is None:
        _default_runtime = Runtime()
    return _default_runtime
