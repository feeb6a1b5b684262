"""Engines for evaluation runs: the chunks of items run here (``local``) or on Ray actors (``ray``).

The Ray engine starts one actor per GPU of the cluster (``num_gpus=1`` each;
Ray gives each its own ``CUDA_VISIBLE_DEVICES``; ``workers`` of them when
given, at most one per GPU), or ``workers`` CPU actors (default 2) when the
cluster has no GPU or the settings' device is ``cpu`` (CPU actors reserve no
GPU). Each actor builds its planner, interpreter and runtime once, from
:class:`WorkerSettings` (plain, picklable values: the registry is named by an
importable ``"module:function"``), and runs chunks with the unit of work it is
given (a :data:`ChunkWork`: a module-level function, so that Ray can send it
by reference; the runner's is :func:`visprog.evaluation.runner.process_chunk`),
as the local engine does in this process. The driver gets the chunks' records
back in item order, as they finish, and writes them as with the local engine (a
chunk whose LLM stopped answering comes back with its records so far and a
mark, :data:`visprog.evaluation.records.ABORTED`, for the item it stopped at:
the driver writes the records, then stops).

Given a planning stage too (a :data:`PlanWork`, the runner's
:func:`visprog.evaluation.runner.plan_chunk`), both engines overlap planning
with running: the next chunk is planned in a thread while one runs (here, or in
the actor that will run it), and ``work`` gets the chunk ``planned=``. A chunk
whose planning stopped (its ``stopped`` is true: the LLM stopped answering)
is not followed by planning ahead.

Ray is imported only here, inside the functions that need it: ``import
visprog`` and ``visprog check`` never import it.
"""

from __future__ import annotations

import importlib
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from visprog.errors import ConfigError, ServiceError, VisprogError
from visprog.evaluation.datasets import Item
from visprog.language.signatures import Registry
from visprog.llm.masking import MASK, mask_secrets
from visprog.planner.core import Planner
from visprog.planner.tasks import input_names
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Runtime
from visprog.solving import create_planner

__all__ = [
    "DEFAULT_REGISTRY",
    "ChunkWork",
    "PlanWork",
    "WorkerSettings",
    "load_factory",
    "local_chunks",
    "ray_chunks",
]

#: An engine's unit of work: ``work(chunk, planner, interpreter, **options)`` is the records of the
#: items of ``chunk`` (a list of dicts, in item order). For the Ray engine it must be a module-level
#: function (Ray pickles it by reference).
ChunkWork = Callable[..., list[dict[str, Any]]]

#: An engine's planning stage, to plan a chunk while the one before it runs: ``plan(chunk, planner,
#: cancel=event, **options)`` is the chunk planned (an object whose ``stopped`` says whether no later
#: chunk is to be planned), which ``work`` then gets as ``planned=``; once ``cancel`` (a
#: :class:`threading.Event`) is set it stops between items. Module-level, as :data:`ChunkWork`.
PlanWork = Callable[..., Any]

#: The registry factory a worker calls unless told otherwise.
DEFAULT_REGISTRY = "visprog.running.plugins:default_registry"

#: CPU actors started when the cluster has no GPU and ``workers`` is not given.
DEFAULT_CPU_WORKERS = 2

_INSTALL = "pip install 'visprog[ray]'"


def load_factory(spec: str) -> Callable[[], Registry]:
    """The function a ``"module:function"`` string names (a :class:`ConfigError` when it cannot be found)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"registry factory '{spec}': expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"registry factory '{spec}': cannot import {module_name}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"registry factory '{spec}': {module_name} has no function {attr}")
    return factory


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to build its planner, interpreter and runtime: plain values only.

    ``planner``: keyword options of :func:`visprog.solving.create_planner` (``model``,
    ``base_url``, ``style``, ``local``, ``repair_rounds``, ``cache``,
    ``temperature``, ``constrain``, ``grammar_format``, ...; not ``registry``). ``device``, ``half``, ``modules``
    and ``llm`` are the :class:`~visprog.running.runtime.Runtime`'s settings;
    ``registry`` a ``"module:function"`` returning the
    :class:`~visprog.language.signatures.Registry`; ``max_batch`` the interpreter's.
    """

    planner: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    half: bool = True
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    registry: str = DEFAULT_REGISTRY
    max_batch: int | None = None

    def __repr__(self) -> str:
        """The settings with every ``api_key`` and the secrets of every URL masked."""
        shown = ", ".join(f"{f.name}={_without_keys(getattr(self, f.name))!r}" for f in fields(self))
        return mask_secrets(f"WorkerSettings({shown})")

    @classmethod
    def from_runtime(
        cls,
        runtime: Runtime,
        planner: dict[str, Any],
        *,
        registry: str = DEFAULT_REGISTRY,
        max_batch: int | None = None,
    ) -> WorkerSettings:
        """The settings that rebuild ``runtime`` (its plain fields, not its model pool) in a worker."""
        return cls(
            planner=dict(planner),
            device=runtime.device_request,
            half=runtime.half,
            modules={k: dict(v) for k, v in runtime.modules.items()},
            llm=dict(runtime.llm),
            registry=registry,
            max_batch=max_batch,
        )

    def build(self, *, device: str | None = None) -> tuple[Planner, Interpreter]:
        """A planner and an interpreter sharing one registry and a new runtime (``device`` wins over the settings')."""
        if "registry" in self.planner:
            raise ConfigError("WorkerSettings.planner cannot hold 'registry': name a factory in .registry")
        registry = load_factory(self.registry)()
        runtime = Runtime(
            device_request=device or self.device,
            half=self.half,
            modules={k: dict(v) for k, v in self.modules.items()},
            llm=dict(self.llm),
            progress=False,
            registry=registry,  # the modules' options are checked against the worker's registry
        )
        planner = create_planner(registry=registry, **self.planner)
        return planner, Interpreter(registry, runtime, max_batch=self.max_batch, known_inputs=input_names())


def _without_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: MASK if k == "api_key" and v else _without_keys(v) for k, v in value.items()}
    return value


class _Ahead:
    """Plans chunks in one background thread, one at a time, for the chunk running now to overlap with."""

    def __init__(self, plan: PlanWork, planner: Any, options: Mapping[str, Any]) -> None:
        self.plan, self.planner, self.options = plan, planner, options
        self.cancel = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visprog-plan-ahead")

    def start(self, chunk: Sequence[Item]) -> Future[Any]:
        return self.pool.submit(self.plan, chunk, self.planner, cancel=self.cancel, **self.options)

    def close(self) -> None:
        """Stop planning after the requests on their way (no wait here: the thread ends by itself)."""
        self.cancel.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


def local_chunks(
    chunks: Sequence[Sequence[Item]],
    work: ChunkWork,
    planner: Planner,
    interpreter: Any,
    *,
    plan: PlanWork | None = None,
    **options: Any,
) -> Iterator[list[dict[str, Any]]]:
    """The records of each chunk, in chunk order, run one after another in this process.

    With ``plan``, chunk k+1 is planned in a background thread while chunk k runs here (and while
    its records are taken); closing the iterator early stops that planning.
    """
    if plan is None:
        for chunk in chunks:
            yield work(chunk, planner, interpreter, **options)
        return
    ahead = _Ahead(plan, planner, options)
    try:
        future = ahead.start(chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            assert future is not None
            planned = future.result()
            future = ahead.start(chunks[k + 1]) if k + 1 < len(chunks) and not planned.stopped else None
            yield work(chunk, planner, interpreter, planned=planned, **options)
            if future is None:
                return  # planning stopped at this chunk: the evaluation stops after its records
    finally:
        ahead.close()


class _Worker:
    """A Ray actor's state: its own planner and interpreter, built once (models load on first use).

    With a planning stage, :meth:`run` plans the chunk it is told comes next to this actor in a
    background thread while it runs the current one.
    """

    def __init__(
        self, settings: WorkerSettings, device: str | None, work: ChunkWork, plan: PlanWork | None = None
    ) -> None:
        self.planner, self.interpreter = settings.build(device=device)
        self.work = work
        self.plan = plan
        self.ahead: tuple[int, Future[Any]] | None = None
        self.planning: _Ahead | None = None

    def ready(self) -> bool:
        return True

    def run(
        self,
        chunk: Sequence[Item],
        options: dict[str, Any],
        key: int = 0,
        next_chunk: tuple[int, Sequence[Item]] | None = None,
    ) -> list[dict[str, Any]]:
        """The records of ``chunk`` (number ``key``); ``next_chunk``: the number and items of this actor's next one."""
        if self.plan is None:
            return self.work(chunk, self.planner, self.interpreter, **options)
        if self.planning is None:
            self.planning = _Ahead(self.plan, self.planner, options)
        if self.ahead is not None and self.ahead[0] == key:
            future = self.ahead[1]
        else:
            future = self.planning.start(chunk)
        self.ahead = None
        planned = future.result()
        if next_chunk is not None and not planned.stopped:
            self.ahead = (next_chunk[0], self.planning.start(next_chunk[1]))
        return self.work(chunk, self.planner, self.interpreter, planned=planned, **options)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the ray engine needs Ray: {_INSTALL}") from None
    return ray


def _wants_gpu(requested: str | None) -> bool:
    """Whether a device setting lets an actor use a GPU: none given, ``auto``, or ``cuda``/``cuda:N``."""
    return requested is None or requested == "auto" or requested.startswith("cuda")


def _actors(
    resources: Mapping[str, float], device: str | None, workers: int | None
) -> tuple[int, dict[str, Any], str | None]:
    """How many actors to start, their Ray resource options, and the device each builds its runtime on.

    One actor per GPU (``num_gpus=1``; at most ``workers``, which may not exceed the GPUs) when the
    cluster has GPUs and ``device`` allows one; otherwise ``workers`` CPU actors (default
    :data:`DEFAULT_CPU_WORKERS`), also on a GPU cluster when ``device`` is ``cpu`` (or ``mps``):
    they reserve no GPU.
    """
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1.0))
    if gpus and _wants_gpu(device):
        n = workers or gpus
        if n > gpus:
            raise ConfigError(f"{n} workers asked for, but the Ray cluster has {gpus} GPU(s): one worker per GPU")
        return n, {"num_gpus": 1, "num_cpus": min(1.0, cpus / n)}, "cuda"  # the GPU Ray gave the actor
    n = workers or DEFAULT_CPU_WORKERS
    return n, {"num_cpus": min(1.0, cpus / n)}, device


def _reachable(address: str) -> None:
    """A quick TCP check of a ``host:port`` address (Ray itself waits a minute or more on a dead one)."""
    if "://" in address or address == "auto" or ":" not in address:
        return  # ray:// client addresses and "auto" are left to Ray
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {e}") from None


def ray_chunks(
    chunks: Sequence[Sequence[Item]],
    work: ChunkWork,
    settings: WorkerSettings,
    *,
    address: str | None = None,
    workers: int | None = None,
    plan: PlanWork | None = None,
    **options: Any,
) -> Iterator[list[dict[str, Any]]]:
    """The records of each chunk, in chunk order, run on Ray actors (see the module's docstring).

    Connects to the cluster at ``address`` (local Ray when None) unless Ray is
    already initialised in this process; a Ray started here is shut down at the end.
    Each actor runs ``work(chunk, planner, interpreter, **options)`` with the planner and interpreter
    it built from ``settings`` (and, with ``plan``, plans the next chunk it is given while it runs
    one: each actor is handed its next chunk when it starts one); ``options`` are ``work``'s (for the runner's
    :func:`~visprog.evaluation.runner.process_chunk`: ``samples``, ``temperature``, ``max_pixels``,
    ``outputs``, ``traces``, ...). The actors save image answers and trace pages
    themselves: folders are made absolute here, and on a cluster of several machines they must be
    folders every node sees, like the images.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    ray = _import_ray()
    load_factory(settings.registry)  # a wrong name fails here, not in every actor
    if address:
        _reachable(address)
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        except Exception as e:  # ConnectionError, RuntimeError, ValueError: all mean "no cluster there"
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise ConfigError(f"cannot connect to {where}: {e}") from None
        started = True
    try:
        for key in ("outputs", "traces"):
            if options.get(key) is not None:
                options[key] = str(Path(options[key]).absolute())
        yield from _run_on_actors(ray, chunks, work, settings, workers, options, plan)
    finally:
        if started:
            ray.shutdown()


def _run_on_actors(
    ray: Any,
    chunks: Sequence[Sequence[Item]],
    work: ChunkWork,
    settings: WorkerSettings,
    workers: int | None,
    options: dict[str, Any],
    plan: PlanWork | None = None,
) -> Iterator[list[dict[str, Any]]]:
    n, actor_options, device = _actors(ray.cluster_resources(), settings.device, workers)
    n = min(n, len(chunks)) or 1
    remote = ray.remote(_Worker).options(**actor_options)
    actors = [remote.remote(settings, device, work, plan) for _ in range(n)]
    try:
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as e:
            raise ConfigError(f"a Ray worker failed to start: {e}") from None
        try:
            yield from _in_order(ray, actors, chunks, options, ahead=plan is not None)
        except ray.exceptions.RayTaskError as e:  # the work raised: the same error would come again on a rerun
            cause = getattr(e, "cause", None)
            if isinstance(cause, VisprogError):
                raise cause from e  # as the local engine would raise it
            what = f"{type(cause).__name__}: {_first_line(cause)}" if cause is not None else _first_line(e)
            raise VisprogError(
                f"a Ray worker raised an unexpected error while running items ({what}); the records written so "
                "far are kept, but running again would stop at the same place: run the remaining items with "
                "the local engine (--traceback shows where the error is)"
            ) from e
        except ray.exceptions.RayError as e:  # a worker died (out of memory, a crash) or was lost
            raise ServiceError(
                f"a Ray worker failed while running items ({type(e).__name__}: {_first_line(e)}); "
                "the records written so far are kept: run the same command again to resume"
            ) from e
    finally:
        for a in actors:
            ray.kill(a)


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def _in_order(
    ray: Any, actors: Sequence[Any], chunks: Sequence[Sequence[Item]], options: dict[str, Any], *, ahead: bool
) -> Iterator[list[dict[str, Any]]]:
    """The chunks' records in chunk order, each chunk given to the next actor that is free.

    With ``ahead``, an actor is told its next chunk when it starts one (so that it plans that chunk
    while it runs this one): the chunks are handed out one further in advance. When a chunk fails (its
    actor died, or its work raised), the chunks that finished after the last one given are given (out
    of order: their records are written all the same) before the error is raised.
    """
    waiting = deque(range(len(chunks)))
    upcoming: dict[int, int | None] = {}  # actor index -> the chunk it was told comes next
    running: dict[Any, tuple[int, int]] = {}  # object ref -> (actor index, chunk)
    done: dict[int, list[dict[str, Any]]] = {}

    def start(i: int, k: int) -> None:
        after = waiting.popleft() if ahead and waiting else None
        upcoming[i] = after
        following = (after, list(chunks[after])) if after is not None else None
        running[actors[i].run.remote(list(chunks[k]), options, k, following)] = (i, k)

    for i in range(len(actors)):
        if waiting:
            start(i, waiting.popleft())
    given = 0
    while running:
        (ref,), _ = ray.wait(list(running), num_returns=1)
        i, k = running.pop(ref)
        try:
            done[k] = ray.get(ref)
        except ray.exceptions.RayError:
            for finished in sorted(done):  # the items that finished keep their records
                yield done.pop(finished)
            raise
        after = upcoming.pop(i, None)
        if after is None and waiting:
            after = waiting.popleft()
        if after is not None:
            start(i, after)
        while given in done:
            yield done.pop(given)
            given += 1
