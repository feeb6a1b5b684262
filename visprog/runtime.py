"""What modules share while they run: device, dtype, the model pool, per-run caches.

Nothing here imports torch at import time. The device is resolved once, on
first use (cuda, then mps, then cpu) unless it is set explicitly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Context", "ModelPool", "RunCache", "Runtime", "resolve_device"]

T = TypeVar("T")


def resolve_device(requested: str | None = None) -> str:
    """The device to run models on: ``requested`` if given, else cuda, mps, cpu in that order."""
    if requested and requested != "auto":
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


class ModelPool:
    """Models loaded once per process, shared by key, loaded on first request."""

    def __init__(self) -> None:
        self._models: dict[Any, Any] = {}
        self._lock = threading.RLock()
        self.loads: dict[Any, int] = {}

    def get(self, key: Any, loader: Callable[[], T]) -> T:
        """The model stored under ``key``, calling ``loader()`` the first time only."""
        with self._lock:
            if key not in self._models:
                self._models[key] = loader()
                self.loads[key] = self.loads.get(key, 0) + 1
            return self._models[key]

    def __contains__(self, key: object) -> bool:
        return key in self._models

    def clear(self) -> None:
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
    ``modules`` holds per-module options such as ``{"FaceDet": {"backend": "cascade"}}``.
    """

    device_request: str | None = None
    half: bool = True
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    pool: ModelPool = field(default_factory=ModelPool)
    _device: str | None = field(default=None, init=False, repr=False)

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

    def set_option(self, module: str, key: str, value: Any) -> None:
        self.modules.setdefault(module, {})[key] = value


@dataclass
class Context:
    """Handed to a module that declares a parameter annotated ``Context``.

    ``module`` is the canonical name of the module being run.
    """

    runtime: Runtime
    cache: RunCache
    module: str = ""

    @property
    def pool(self) -> ModelPool:
        return self.runtime.pool

    @property
    def device(self) -> str:
        return self.runtime.device

    @property
    def options(self) -> Mapping[str, Any]:
        return self.runtime.options(self.module)

    def for_module(self, module: str) -> Context:
        return Context(self.runtime, self.cache, module)
