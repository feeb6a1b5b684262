"""``visprog api --engine ray``: the HTTP API on Ray Serve, as replicas that each batch their own requests.

Each replica of the ``VisprogApi`` deployment builds its own :class:`~visprog.apps.api_service.ApiService`
(its own interpreter, models and :class:`~visprog.running.batcher.Batcher`) and serves the very app that
:func:`visprog.apps.api.create_app` makes, through ``serve.ingress``: routes, JSON, errors, the OpenAPI schema
and event streams are the local server's, and so are the token, the limits and the timeouts. Serve's proxy
routes each request to a replica; the requests in flight at one replica share its batched module calls. A
replica takes up to ``max_concurrent + max_queue`` requests at once (and a few more, for health checks), so
that requests gather where they can batch, and so that its gate answers 429 beyond them as the local server
does.

Replicas: one per GPU of the cluster (each holding ``replica_gpus`` of one: 0.5 puts two on a GPU), or CPU
replicas (default :data:`DEFAULT_CPU_REPLICAS`) when the cluster has no GPU or the device is ``cpu``. A
replica is built from :class:`ReplicaSettings`: plain values, the registry named by a ``"module:function"``,
and the plugin files (``--plugin``, ``$VISPROG_PLUGIN_PATH``, a config file's ``plugins``) carried as their
text, so that a replica on another machine loads the same modules.

:func:`build_app` is the builder a Serve config file names (``import_path: visprog.apps.api_ray:build_app``)
for ``serve run`` and ``serve deploy``; :func:`serve_on_ray` is what ``visprog api --engine ray`` runs. Ray is
imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from visprog.apps.api_service import ApiSettings
from visprog.errors import ConfigError
from visprog.evaluation.engines import DEFAULT_REGISTRY, load_factory
from visprog.language.signatures import Registry

if TYPE_CHECKING:
    from fastapi import FastAPI

    from visprog.running.runtime import Runtime

__all__ = [
    "APP_NAME",
    "DEFAULT_CPU_REPLICAS",
    "DEPLOYMENT",
    "TOKEN_ENV",
    "PluginFile",
    "ReplicaApp",
    "ReplicaSettings",
    "application",
    "build_app",
    "plugin_files",
    "replica_options",
    "serve_missing",
    "serve_on_ray",
]

#: The name of the Serve application ``visprog api --engine ray`` runs, and of its deployment.
APP_NAME = "visprog"
DEPLOYMENT = "VisprogApi"
#: CPU replicas started when the cluster has no GPU (or the device is ``cpu``) and no number is given.
DEFAULT_CPU_REPLICAS = 2
#: Requests a replica takes beyond its gate's ``max_concurrent + max_queue``: health checks, /v1/check, ...
EXTRA_ONGOING = 16

#: The environment variable of the API's bearer token (``visprog api``'s ``TOKEN_ENV``).
TOKEN_ENV = "VISPROG_API_TOKEN"

_INSTALL = "pip install 'visprog[ray]'"
_PLUGIN_SOURCE = "plugin file "


def serve_missing() -> str | None:
    """Why Ray Serve cannot be used here (one line naming the pip command), or None when it can."""
    try:
        import ray.serve  # noqa: F401
    except ImportError as e:
        return f"the ray engine needs Ray Serve ({e}): {_INSTALL}"
    return None


def _import_serve() -> tuple[Any, Any]:
    missing = serve_missing()
    if missing is not None:
        raise ConfigError(missing)
    import ray
    from ray import serve

    return ray, serve


@dataclass(frozen=True)
class PluginFile:
    """A plugin file as the server read it: its path there (resolved) and its text."""

    path: str
    text: str

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PluginFile:
        resolved = Path(path).expanduser().resolve()
        try:
            return cls(str(resolved), resolved.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"plugin file {path}: cannot be read to send to the replicas: {e}") from None

    def here(self) -> Path | None:
        """The file itself, where this machine has it with the same text."""
        path = Path(self.path)
        try:
            return path if path.is_file() and path.read_text(encoding="utf-8") == self.text else None
        except (OSError, UnicodeDecodeError):
            return None

    def copy_into(self, folder: Path) -> Path:
        """A copy of the text in a new subfolder of ``folder``, under the file's name."""
        copy = Path(tempfile.mkdtemp(dir=folder)) / Path(self.path).name
        copy.write_text(self.text, encoding="utf-8")
        return copy


def plugin_files(registry: Registry) -> list[Path]:
    """The Python files whose modules ``registry`` holds (loaded from ``--plugin`` and the like), in load order."""
    files: list[Path] = []
    for spec in registry:
        if spec.source.startswith(_PLUGIN_SOURCE):
            path = Path(spec.source.removeprefix(_PLUGIN_SOURCE)).resolve()
            if path not in files:
                files.append(path)
    return files


@dataclass(frozen=True)
class ReplicaSettings:
    """What each replica builds its service from: plain values only (Ray sends them to every replica).

    ``api``: the server's limits and token. ``planner``: keyword options of
    :func:`visprog.solving.create_planner` (not ``registry``); ``device``, ``half``, ``modules`` and ``llm``:
    the :class:`~visprog.running.runtime.Runtime`'s settings; ``registry``: a ``"module:function"`` returning the
    registry, into which the ``plugins`` are loaded.
    """

    api: ApiSettings = field(default_factory=ApiSettings)
    planner: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    half: bool = True
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    registry: str = DEFAULT_REGISTRY
    plugins: tuple[PluginFile, ...] = ()

    def build_registry(self) -> Registry:
        """The registry of ``registry``'s factory, with the plugin files loaded (copies where this machine has
        none of its own: their modules' ``source`` then names the copy)."""
        registry = load_factory(self.registry)()
        if self.plugins:
            from visprog.running.plugins import load_plugin_files

            folder: Path | None = None
            paths = []
            for plugin in self.plugins:
                path = plugin.here()
                if path is None:
                    folder = folder or Path(tempfile.mkdtemp(prefix="visprog-plugins-"))
                    path = plugin.copy_into(folder)
                paths.append(path)
            load_plugin_files(registry, paths, source="the server's plugins")
        return registry

    def build_runtime(self) -> tuple[Registry, Runtime]:
        """The registry, and a runtime on it (the modules' options checked against it); no model loads."""
        from visprog.running.runtime import Runtime

        if "registry" in self.planner:
            raise ConfigError("ReplicaSettings.planner cannot hold 'registry': name a factory in .registry")
        registry = self.build_registry()
        runtime = Runtime(
            device_request=self.device,
            half=self.half,
            modules={k: dict(v) for k, v in self.modules.items()},
            llm=dict(self.llm),
            progress=False,
            registry=registry,
        )
        return registry, runtime

    def build_app(self) -> FastAPI:
        """The API's app with a service of its own (what a replica serves)."""
        from visprog.apps.api import create_app
        from visprog.solving import create_planner

        registry, runtime = self.build_runtime()
        options = dict(self.planner)
        return create_app(
            self.api,
            registry=registry,
            runtime=runtime,
            planner_factory=lambda: create_planner(registry=registry, **options),
        )


class ReplicaApp:
    """The API as one replica serves it: an ASGI app that builds :meth:`ReplicaSettings.build_app` in the
    replica's process, at its startup (the lifespan) or first request, and hands it every call.

    Only the settings travel (pickled); each replica builds its own app, so its own service and batcher.
    """

    def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        self._app: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.settings, self._app, self._lock = state["settings"], None, threading.Lock()

    @property
    def app(self) -> FastAPI:
        with self._lock:
            if self._app is None:
                self._app = self.settings.build_app()
            return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def replica_options(
    resources: Mapping[str, float], device: str | None, replicas: int | None, replica_gpus: float = 1.0
) -> tuple[int, dict[str, Any], str]:
    """How many replicas, their Ray actor options, and the device each builds its runtime on.

    With GPUs in the cluster (``resources``) and a ``device`` that allows one: ``replicas`` replicas (default:
    as many as fit) of ``replica_gpus`` GPU each; else ``replicas`` CPU replicas (default
    :data:`DEFAULT_CPU_REPLICAS`), which reserve no GPU.
    """
    if replicas is not None and replicas < 1:
        raise ConfigError(f"--replicas must be at least 1, got {replicas}")
    if not (replica_gpus > 0 and math.isfinite(replica_gpus)):
        raise ConfigError(
            f"--replica-gpus must be a number above 0 (0.5: two replicas share a GPU), got {replica_gpus}"
        )
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1.0))
    wants_gpu = device is None or device == "auto" or device.startswith("cuda")
    if gpus and wants_gpu:
        fit = int(gpus / replica_gpus + 1e-9)
        n = replicas or fit
        if n < 1 or n * replica_gpus > gpus + 1e-9:
            raise ConfigError(
                f"{n or 1} replica(s) of {replica_gpus:g} GPU each need {(n or 1) * replica_gpus:g} GPUs, but the Ray "
                f"cluster has {gpus:g}: give --replicas {max(fit, 1)} or a smaller --replica-gpus"
            )
        return n, {"num_gpus": replica_gpus, "num_cpus": min(1.0, cpus / n)}, "cuda"  # the GPU Ray gives it
    if device is not None and device.startswith("cuda"):
        raise ConfigError(f"--device {device}: the Ray cluster has no GPU (leave --device out for CPU replicas)")
    n = replicas or DEFAULT_CPU_REPLICAS
    return n, {"num_cpus": min(1.0, cpus / n)}, "cpu" if device in (None, "auto") else device


def application(settings: ReplicaSettings, *, replicas: int, actor_options: Mapping[str, Any]) -> Any:
    """The Serve application: the ``VisprogApi`` deployment of ``replicas`` replicas serving ``settings``' app."""
    _, serve = _import_serve()
    ongoing = settings.api.max_concurrent + settings.api.max_queue + EXTRA_ONGOING
    ingress = serve.ingress(ReplicaApp(settings))()
    deployment = serve.deployment(
        ingress,
        name=DEPLOYMENT,
        num_replicas=replicas,
        ray_actor_options=dict(actor_options),
        max_ongoing_requests=ongoing,
    )
    return deployment.bind()


#: ``build_app``'s arguments that are :class:`ApiSettings`' (the ``visprog api`` options): name -> (field, type).
_API_ARGS: dict[str, tuple[str, type]] = {
    "window_ms": ("window", float),
    "max_batch": ("max_batch", int),
    "max_concurrent": ("max_concurrent", int),
    "max_queue": ("max_queue", int),
    "request_timeout": ("timeout", float),
    "max_upload_mb": ("max_upload_bytes", float),
    "max_pixels": ("max_pixels", int),
}
_REPLICA_ARGS = ("replicas", "replica_gpus", "device", "half", "modules", "llm", "registry", "plugins", "token")


def build_app(args: Mapping[str, Any] | None = None) -> Any:
    """The Serve application of a Serve config file (``import_path: visprog.apps.api_ray:build_app``).

    ``args`` (all optional): ``token`` (default ``$VISPROG_API_TOKEN`` where the application is built),
    ``window_ms``, ``max_batch``, ``max_concurrent``, ``max_queue``, ``request_timeout``, ``max_upload_mb``,
    ``max_pixels`` as ``visprog api``'s options; ``replicas`` and ``replica_gpus`` as ``--replicas`` and
    ``--replica-gpus``; ``device``, ``half``, ``modules`` (``{"FaceDet": {"backend": "cascade"}}``) and
    ``llm`` (the planner's settings, as a config file's ``[llm]`` table) for the runtime; ``registry`` (a
    ``"module:function"``) and ``plugins`` (Python files, read where the application is built).
    """
    args = dict(args or {})
    unknown = sorted(set(args) - set(_API_ARGS) - set(_REPLICA_ARGS))
    if unknown:
        known = ", ".join(sorted([*_API_ARGS, *_REPLICA_ARGS]))
        raise ConfigError(f"visprog.apps.api_ray:build_app: unknown argument(s) {', '.join(unknown)}; known: {known}")
    limits: dict[str, Any] = {}
    for name, (attr, kind) in _API_ARGS.items():
        if args.get(name) is not None:
            try:
                limits[attr] = kind(args[name])
            except (TypeError, ValueError):
                raise ConfigError(f"build_app argument {name}: expected a number, got {args[name]!r}") from None
    if "window" in limits:
        limits["window"] /= 1000  # ms
    if "max_upload_bytes" in limits:
        limits["max_upload_bytes"] = int(limits["max_upload_bytes"] * 1_000_000)  # MB
    api = ApiSettings(token=args.get("token") or os.environ.get(TOKEN_ENV) or None, **limits)
    llm = dict(args.get("llm") or {})
    settings = ReplicaSettings(
        api=api,
        planner=llm,
        device=args.get("device"),
        half=bool(args.get("half", True)),
        modules={str(k): dict(v) for k, v in (args.get("modules") or {}).items()},
        llm=llm,
        registry=str(args.get("registry") or DEFAULT_REGISTRY),
        plugins=tuple(PluginFile.read(p) for p in args.get("plugins") or ()),
    )
    settings.build_runtime()  # a wrong factory, plugin or module option fails here, once, not in every replica
    ray, _ = _import_serve()
    replicas = args.get("replicas")
    n, actor_options, device = replica_options(
        ray.cluster_resources(),
        settings.device,
        int(replicas) if replicas is not None else None,
        float(args.get("replica_gpus", 1.0)),
    )
    return application(replace(settings, device=device), replicas=n, actor_options=actor_options)


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (a local Ray started here when None); whether Ray was started here."""
    if address and "://" not in address and address != "auto" and ":" in address:
        host, _, port = address.rpartition(":")
        try:  # Ray itself waits minutes on an address where nothing listens
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot connect to the Ray cluster at {address}: {e}") from None
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except Exception as e:  # ConnectionError, RuntimeError, ValueError: all mean "no cluster there"
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(f"cannot connect to {where}: {_first_line(e)}") from None
    return True


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def serve_on_ray(
    settings: ReplicaSettings,
    *,
    host: str,
    port: int,
    out: TextIO,
    address: str | None = None,
    replicas: int | None = None,
    replica_gpus: float = 1.0,
    stop: threading.Event | None = None,
) -> None:
    """Serve the API on Ray Serve at ``host:port`` until Ctrl+C or SIGTERM (or ``stop`` is set), then take it down.

    Joins the cluster at ``address`` (a local Ray started here when None, and shut down at the end) unless Ray
    is initialised in this process already. On the way out the application is deleted, after its replicas
    have answered the requests they hold; Serve itself stays up on a cluster joined.
    """
    ray, serve = _import_serve()
    settings.build_runtime()  # a wrong factory, plugin or module option: one error here, not one per replica
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not a line per start, deploy and delete
    started = _connect(ray, address)
    deployed = False
    try:
        n, actor_options, device = replica_options(ray.cluster_resources(), settings.device, replicas, replica_gpus)
        app = application(replace(settings, device=device), replicas=n, actor_options=actor_options)
        try:
            serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
            deployed = True
            serve.run(app, name=APP_NAME, route_prefix="/", logging_config={"log_level": "WARNING"})
        except Exception as e:  # a replica that cannot start, a port Serve cannot bind
            raise ConfigError(
                f"the API could not start on Ray Serve: {_first_line(e)} (the replicas' logs say why)"
            ) from None
        what = f"{replica_gpus:g} GPU each" if "num_gpus" in actor_options else "on CPUs"
        auth = "a bearer token" if settings.api.token else "no token (loopback only)"
        print(
            f"visprog API on Ray Serve at http://{host}:{port} with {auth}: {n} replica(s), {what}; docs at /docs "
            "(Ctrl+C to stop)",
            file=out,
        )
        out.flush()
        try:
            with _terminate_as_interrupt():
                while stop is None or not stop.is_set():
                    time.sleep(0.2)
        except KeyboardInterrupt:
            print("stopping the API on Ray Serve", file=out)
    finally:
        _take_down(serve, deployed)
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager's stop) ends the wait as Ctrl+C does, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _take_down(serve: Any, deployed: bool) -> None:
    """Delete the application (its replicas finish the requests they hold first); a Ray started here takes
    Serve's own actors down with it."""
    if not deployed:
        return
    try:
        serve.delete(APP_NAME)
    except Exception:  # the cluster went away meanwhile: nothing is left to take down
        pass
