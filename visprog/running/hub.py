"""Model weights: load from the Hugging Face cache (or a local folder), once per process.

``load_model(ctx, loader)`` is how a module gets its model: the model id comes
from the module's configuration (``--model``, config file) or its backend's
default; ``loader(model_id, placement)`` loads it in the runtime's precision
(``placement.dtype``: ``from_pretrained(model_id, **placement.pretrained_kwargs())``),
so the weights never exist in float32 first, and ``load_model`` puts what it
returns on the runtime's device in eval mode. The loaded model is kept in the
runtime's pool under the loader, the model id, the device and the dtype, so
every module that uses the same model shares one copy. When the weights are
not on this machine and cannot be fetched (``HF_HUB_OFFLINE=1``, no network),
the error names the module, the model and the command that fetches it. A hub
id with nothing in the cache is first checked with one quick request to the
hub, so that an unreachable hub fails in seconds rather than after
huggingface_hub's retries; when the hub has it, its files are fetched as
``visprog models pull`` fetches them, before the loader runs.

The runtime's listeners (:meth:`Runtime.listening
<visprog.running.runtime.Runtime.listening>`) hear every load that is not
served from the pool: :class:`~visprog.running.events.ModelLoading`, then
:class:`~visprog.running.events.ModelDownload` while files download (bytes done
of the total, through huggingface_hub's ``tqdm_class``: :class:`DownloadReport`),
then :class:`~visprog.running.events.ModelLoaded`.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from visprog.errors import ModelUnavailableError, ServiceError
from visprog.running.events import ModelDownload, ModelLoaded, ModelLoading
from visprog.running.runtime import Context, Runtime

__all__ = [
    "DOWNLOAD_EVENTS_PER_S",
    "IGNORE_PATTERNS",
    "DownloadReport",
    "ModelStatus",
    "Placement",
    "fetch_command",
    "forget_unreachable",
    "is_cached",
    "is_missing_weights",
    "is_offline",
    "load_model",
    "model_statuses",
    "pull",
    "redundant_files",
]

T = TypeVar("T")

#: Files a download skips: other frameworks' copies of the same weights.
IGNORE_PATTERNS = ["*.h5", "*.msgpack", "*.ot", "*.tflite", "flax_model*", "tf_model*", "*.ckpt", "rust_model*"]


#: Seconds the reachability probe waits for the hub before a missing model fails.
PROBE_TIMEOUT_S = 5.0
#: What a missing-model error suggests for machines without network.
OFFLINE_HINT = "on a machine without network, set HF_HUB_OFFLINE=1 to skip network checks"


def fetch_command(module: str, model_id: str) -> str:
    return f"visprog models pull {module}  (or: hf download {model_id})"


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network (``1``, ``true``, ``yes`` or ``on``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_missing_weights(e: BaseException) -> bool:
    """Whether an exception from ``from_pretrained`` or ``hf_hub_download`` means 'weights not available'
    (not in the cache, no such repository or file, offline, no network) rather than a bug."""
    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return isinstance(e, OSError)
    known = tuple(
        getattr(hf_errors, n)
        for n in ("LocalEntryNotFoundError", "RepositoryNotFoundError", "EntryNotFoundError", "OfflineModeIsEnabled")
        if hasattr(hf_errors, n)
    )
    return isinstance(e, (OSError, ConnectionError, *known))


@dataclass(frozen=True)
class Placement:
    """Where a loader's model runs and in what precision: the runtime's device and dtype.

    ``dtype`` is a torch dtype (``torch.float16`` on a GPU by default), ``"auto"``
    for the checkpoint's own precision, or None for a model that is not a torch
    model (``load_model(..., on_device=False)``): then nothing is asked of ``from_pretrained``.
    """

    device: str
    dtype: Any = None

    def pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' and diffusers' ``from_pretrained``: the weights load
        in ``dtype`` directly (on the cpu; ``load_model`` then moves the model to ``device``)."""
        return {"dtype": self.dtype} if self.dtype is not None else {}


def load_model(
    ctx: Context,
    loader: Callable[[str, Placement], T],
    *,
    model_id: str | None = None,
    on_device: bool = True,
) -> T:
    """The model for ``ctx``'s module, loaded by ``loader(model_id, placement)`` on first use only.

    ``loader`` receives a hub id or a local folder and the runtime's
    :class:`Placement`, and returns the model (or a tuple of model and
    processor) in ``placement.dtype``. With ``on_device``, whatever it returns
    that has ``.to`` and ``.eval`` (a torch module) is moved to the runtime's
    device, in the dtype it has, and put in eval mode; a pipeline without
    ``.eval`` is the loader's to move. Without ``on_device`` (a model that is
    not a torch model), the placement is the cpu with no dtype, and the pool
    shares the model across devices and dtypes.
    """
    model_id = model_id or ctx.model_id
    runtime = ctx.runtime
    name = f"{getattr(loader, '__module__', '?')}.{getattr(loader, '__qualname__', repr(loader))}"
    key = (name, model_id, runtime.device if on_device else "-", runtime.dtype_name if on_device else "-")

    def load() -> T:
        placement = Placement(runtime.device, runtime.torch_dtype()) if on_device else Placement("cpu")
        started = time.perf_counter()
        runtime.emit(ModelLoading(ctx.module, model_id, placement.device))
        if runtime.progress:
            where = f" on {runtime.device} ({runtime.dtype_name})" if on_device else ""
            print(f"{ctx.module}: loading {model_id}{where} ...", file=sys.stderr, flush=True)
        try:
            unreachable, files = _probe_hub(model_id)
            if unreachable is not None:  # fail now, not after huggingface_hub's ~30 s of retries
                raise ModelUnavailableError(ctx.module, model_id, unreachable, fetch_command(ctx.module, model_id))
            if files is not None:  # on the hub, not in the cache: fetched here, where its progress is told
                _fetch(model_id, files, DownloadReport(runtime, ctx.module, model_id))
            takes_placement = _takes_placement(loader)
            loaded = loader(model_id, placement) if takes_placement else loader(model_id)  # type: ignore[call-arg]
        except ModelUnavailableError:
            raise
        except Exception as e:
            if not is_missing_weights(e):
                raise
            if os.path.isdir(model_id):
                reason = f"the folder has no usable model files ({type(e).__name__}: {e})"
            elif is_offline():
                reason = "it is not in the Hugging Face cache and HF_HUB_OFFLINE=1"
            else:
                reason = f"it is not in the Hugging Face cache and the hub could not be reached; {OFFLINE_HINT}"
            raise ModelUnavailableError(ctx.module, model_id, reason, fetch_command(ctx.module, model_id)) from e
        if on_device:
            # a one-argument loader (the older form) gets float32 weights: they are cast here
            _to_device(loaded, placement.device, None if takes_placement else placement.dtype)
        seconds = time.perf_counter() - started
        if runtime.progress:
            print(f"{ctx.module}: loaded {model_id} in {seconds:.1f} s", file=sys.stderr, flush=True)
        runtime.emit(ModelLoaded(ctx.module, model_id, seconds))
        return loaded

    return ctx.pool.get(key, load)


#: How long a probe that found the hub unreachable is trusted (a batch of failing steps probes once).
_UNREACHABLE_FOR_S = 60.0
#: The last failed probe per endpoint: (time.monotonic(), why).
_unreachable: dict[str, tuple[float, str]] = {}


def forget_unreachable() -> None:
    """Forget which hubs were found unreachable: the next missing model probes its hub again."""
    _unreachable.clear()


def _probe_hub(model_id: str) -> tuple[str | None, list[str] | None]:
    """Why ``model_id`` cannot come from the hub right now (or None to let the loader try), and the
    repository's files when the hub listed them (None: nothing to fetch before the loader runs).

    Only for a hub id with nothing of it in the Hugging Face cache, when offline mode is off:
    one request of at most :data:`PROBE_TIMEOUT_S` seconds, not retried, to the hub's model
    API. ``(None, None)`` when the hub answered with an error (even "no such model": the loader
    says that better), when ``model_id`` is a file or folder or not a hub id, or when the model
    is (partly) cached.
    """
    if is_offline() or os.path.exists(os.path.expanduser(model_id)) or not _is_repo_id(model_id):
        return None, None
    if _in_cache(model_id):
        return None, None
    try:
        from huggingface_hub import HfApi, constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None, None
    if getattr(constants, "HF_HUB_OFFLINE", False):  # offline as huggingface_hub sees it (TRANSFORMERS_OFFLINE too)
        return None, None
    endpoint = constants.ENDPOINT
    known = _unreachable.get(endpoint)
    if known is not None and time.monotonic() - known[0] < _UNREACHABLE_FOR_S:
        return known[1], None
    try:
        info = HfApi(endpoint=endpoint).model_info(model_id, timeout=PROBE_TIMEOUT_S)
    except Exception as e:
        if not _is_network_error(e):
            return None, None  # the hub answered (unknown, gated, ...) or something else: the loader decides
        lines = str(e).strip().splitlines()
        why = (
            f"it is not in the Hugging Face cache and the hub at {endpoint} could not be reached "
            f"[{type(e).__name__}: {lines[0] if lines else 'no answer'}]; {OFFLINE_HINT}"
        )
        _unreachable[endpoint] = (time.monotonic(), why)
        return why, None
    _unreachable.pop(endpoint, None)
    return None, [s.rfilename for s in info.siblings or []]


def _fetch(model_id: str, files: list[str], report: DownloadReport) -> None:
    """Download ``model_id`` into the Hugging Face cache as :func:`pull` does (``files``: the repository's
    listing), its progress told by ``report``. A failed download is left to the loader, which tries again
    and says why it cannot load the model."""
    try:
        pull(model_id, files=files, tqdm_class=report.tqdm_class)
    except ServiceError:
        pass
    finally:
        report.finish()


#: A Hugging Face repository id, as huggingface_hub validates one: ``name`` or ``owner/name``.
_REPO_ID = re.compile(r"^(\b[\w\-.]+\b/)?\b[\w\-.]+\b$")


def _is_repo_id(model_id: str) -> bool:
    return len(model_id) <= 96 and "--" not in model_id and ".." not in model_id and bool(_REPO_ID.match(model_id))


def _in_cache(model_id: str) -> bool:
    """Whether the Hugging Face cache holds any snapshot of the model (complete or not)."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:  # pragma: no cover
        return False
    snapshots = os.path.join(constants.HF_HUB_CACHE, repo_folder_name(repo_id=model_id, repo_type="model"), "snapshots")
    try:
        return any(os.scandir(snapshots))
    except OSError:
        return False


def _is_network_error(e: BaseException) -> bool:
    """Whether a request failed without an answer from the server (refused, timed out, no route, DNS)."""
    names = _error_names(e)
    if "HfHubHTTPError" in names or "HTTPStatusError" in names:
        return False  # the server answered with an HTTP status
    network = {"TransportError", "RequestError", "ConnectionError", "Timeout", "TimeoutException"}
    return bool(names & network) or isinstance(e, (OSError, TimeoutError))


def _takes_placement(loader: Callable[..., Any]) -> bool:
    """Whether ``loader`` takes ``(model_id, placement)``; plugins written for ``(model_id)`` still load."""
    try:
        signature = inspect.signature(loader)
    except (TypeError, ValueError):  # a builtin or C callable: assume the current form
        return True
    try:
        signature.bind("model", Placement("cpu"))
    except TypeError:
        return False
    return True


def _to_device(loaded: Any, device: str, dtype: Any = None) -> None:
    """Torch modules in ``loaded`` (one, or a tuple) moved to ``device`` (and ``dtype`` if given), in eval mode."""
    items = loaded if isinstance(loaded, tuple) else (loaded,)
    for item in items:
        if hasattr(item, "to") and hasattr(item, "eval"):
            if dtype is not None:
                item.to(device=device, dtype=dtype)
            else:
                item.to(device)  # no copy when it is there already
            item.eval()


def is_cached(model_id: str) -> bool:
    """Whether the model is on this machine (a folder, or complete in the Hugging Face cache)."""
    if os.path.isdir(model_id):
        return True
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return False
    skip = redundant_files(_cached_files(model_id))  # what `pull` left out is not missing
    try:
        snapshot_download(model_id, local_files_only=True, ignore_patterns=[*IGNORE_PATTERNS, *skip])
    except Exception:
        return False
    return True


def _cached_files(model_id: str) -> list[str]:
    """The repository's files as listed when it was downloaded, from the Hugging Face cache; [] if unknown.

    huggingface_hub keeps that listing with the snapshot (and, offline, refuses a snapshot that lacks a listed
    file unless the same ignore patterns are given); older versions keep none and check nothing.
    """
    try:
        from huggingface_hub import get_cached_repo_tree
    except ImportError:
        return []
    try:
        return [f.path for f in get_cached_repo_tree(model_id)]
    except Exception:
        return []


def redundant_files(files: Iterable[str]) -> list[str]:
    """Weight files a download can skip: in each folder that has full-precision safetensors,
    the pickled copies (``*.bin``, ``*.pt``, ``*.pth``) and the half-precision variants."""
    files = list(files)
    folders: dict[str, list[str]] = {}
    for f in files:
        folder, _, name = f.rpartition("/")
        folders.setdefault(folder, []).append(name)
    skip = []
    for folder, names in folders.items():
        if not any(n.endswith(".safetensors") and ".fp16." not in n for n in names):
            continue
        prefix = f"{folder}/" if folder else ""
        skip += [
            prefix + n
            for n in names
            if n.endswith((".bin", ".pt", ".pth")) or (".fp16." in n and n.endswith(".safetensors"))
        ]
    return skip


def pull(model_id: str, *, files: list[str] | None = None, tqdm_class: Any = None) -> str:
    """Download a model into the Hugging Face cache, with progress bars; returns its folder.

    Only one copy of each weight file is fetched (safetensors when the repo has them). A model already
    complete in the cache, or a local folder, needs no network. A failed download raises
    :class:`ServiceError` naming the model, the hub and why. ``files`` is the repository's file
    listing when the caller has it (else it is asked of the hub); ``tqdm_class`` makes huggingface_hub's
    progress bars (:attr:`DownloadReport.tqdm_class` tells them as events).
    """
    if os.path.isdir(model_id):  # a local folder: nothing to download
        return model_id
    from huggingface_hub import HfApi, constants, snapshot_download

    if files is None:
        try:  # one request, not retried: the paginated file listing retries for ~20 s when the hub is down
            files = [s.rfilename for s in HfApi().model_info(model_id).siblings or []]
        except Exception:  # unreachable, offline or unknown: snapshot_download says which
            files = _cached_files(model_id)
    skip = redundant_files(files)
    try:
        return str(snapshot_download(model_id, ignore_patterns=[*IGNORE_PATTERNS, *skip], tqdm_class=tqdm_class))
    except Exception as e:
        if not _is_download_error(e):
            raise
        raise ServiceError(f"could not download '{model_id}' from {constants.ENDPOINT}: {_download_failure(e)}") from e


#: The most :class:`~visprog.running.events.ModelDownload` events a second, per model.
DOWNLOAD_EVENTS_PER_S = 4.0
#: huggingface_hub's bar of the bytes a snapshot received: the bytes its bar of bytes written counts again.
_TRANSFER_BAR = "huggingface_hub.snapshot_download.transfer"


class DownloadReport:
    """The bytes downloaded of one model's files, told to ``runtime``'s listeners as
    :class:`~visprog.running.events.ModelDownload` events.

    :attr:`tqdm_class` is what huggingface_hub takes as ``tqdm_class`` (``snapshot_download``,
    ``hf_hub_download``; transformers' ``from_pretrained`` passes it on): its byte bars are counted
    (done, and the total of their sizes once every bar knows its size), and shown on standard error as
    huggingface_hub shows its own when ``runtime.progress`` is on. Events go out as the bytes come, at
    most :data:`DOWNLOAD_EVENTS_PER_S` a second; :meth:`finish` sends the last count.
    """

    def __init__(self, runtime: Runtime, module: str, model_id: str) -> None:
        self.runtime = runtime
        self.module = module
        self.model_id = model_id
        self._lock = threading.Lock()
        self._bars: list[Any] = []
        self._sent: tuple[int, int | None] | None = None
        self._last = 0.0
        self.tqdm_class: type = _progress_bar_class(self)

    def progress(self) -> tuple[int, int | None]:
        """Bytes downloaded so far, and of how many (None while a file's size is not known)."""
        with self._lock:
            return self._progress()

    def _progress(self) -> tuple[int, int | None]:
        done = sum(bar.visprog_bytes for bar in self._bars)
        totals = [bar.total for bar in self._bars]
        return done, int(sum(totals)) if totals and all(totals) else None

    def add(self, bar: Any) -> None:
        """Count ``bar``'s bytes (a bar of :attr:`tqdm_class` counting bytes does this itself)."""
        with self._lock:
            self._bars.append(bar)
        self._tell()

    def count(self, bar: Any, n: float | None) -> None:
        """``n`` more bytes of ``bar`` are in."""
        with self._lock:
            bar.visprog_bytes += int(n or 0)
        self._tell()

    def finish(self) -> None:
        """Send the last count, if any bytes were counted and it was not sent yet."""
        self._tell(final=True)

    def _tell(self, *, final: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._bars:
                return
            progress = self._progress()
            if progress == self._sent or (not final and now - self._last < 1 / DOWNLOAD_EVENTS_PER_S):
                return
            self._sent, self._last = progress, now
        self.runtime.emit(ModelDownload(self.module, self.model_id, *progress))


def _progress_bar_class(report: DownloadReport) -> type:
    """A huggingface_hub progress bar whose byte counts go to ``report``."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    class ModelDownloadBar(hub_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # bars of bytes count; a bar of files does not (tqdm compares bars by position: a flag, not `in`)
            counts = kwargs.get("unit") == "B" and kwargs.get("name") != _TRANSFER_BAR
            if not report.runtime.progress:
                kwargs["disable"] = True
            self.visprog_bytes = int(kwargs.get("initial") or 0)
            self.visprog_counts = False
            super().__init__(*args, **kwargs)
            if counts:
                self.visprog_counts = True
                report.add(self)

        def update(self, n: float | None = 1) -> bool | None:
            if self.visprog_counts:
                report.count(self, n)
            return super().update(n)

    return ModelDownloadBar


def _error_names(e: BaseException) -> set[str]:
    return {k.__name__ for k in type(e).__mro__}


def _is_download_error(e: BaseException) -> bool:
    """Whether an exception from snapshot_download is about the hub, the network or the cache (not a bug)."""
    top = type(e).__module__.partition(".")[0]
    return (
        is_missing_weights(e)
        or top in ("huggingface_hub", "httpx", "httpx2", "requests", "urllib3")
        or "HFValidationError" in _error_names(e)
    )


def _download_failure(e: BaseException) -> str:
    """Why a download failed, in a few words."""
    names = _error_names(e)
    if "RepositoryNotFoundError" in names:
        return "the hub has no such model, or it is private or gated (log in with: hf auth login)"
    if "RevisionNotFoundError" in names:
        return "the hub has no such revision of it"
    if "HFValidationError" in names:
        return f"not a valid model id ({str(e).strip().splitlines()[0]})"
    if is_offline():
        return "HF_HUB_OFFLINE=1 (unset it to download) and it is not complete in the Hugging Face cache"
    cause: BaseException = e
    while cause.__cause__ is not None and "LocalEntryNotFoundError" in _error_names(cause):
        cause = cause.__cause__  # the network error behind "cannot find it locally either"
    lines = str(cause).strip().splitlines()
    return f"the hub could not be reached or refused the download ({type(cause).__name__}: {lines[0] if lines else ''})"


@dataclass(frozen=True)
class ModelStatus:
    module: str
    backend: str
    #: the model the backend uses (a hub id, a folder, or a service's model name)
    model_id: str | None
    selected: bool
    cached: bool
    #: whether the model comes from the Hugging Face hub (False: nothing to download)
    downloadable: bool = True


def model_statuses(specs: Iterable[Any], options: Callable[[str], Any]) -> list[ModelStatus]:
    """Every module backend with its model, whether it is the selected one, and whether it is cached."""
    out = []
    for spec in specs:
        chosen = options(spec.name)
        selected_backend = chosen.get("backend") or spec.default_backend
        for backend, default_model in spec.backends.items():
            selected = backend == selected_backend
            model = (chosen.get("model") if selected else None) or default_model
            downloadable = default_model is not None and model is not None
            cached = is_cached(model) if downloadable and model is not None else True
            out.append(ModelStatus(spec.name, backend, model, selected, cached, downloadable))
    return out
