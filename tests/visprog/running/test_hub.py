from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.servers import closed_port
from visprog.errors import ModelUnavailableError
from visprog.running import hub
from visprog.running.hub import Placement, is_cached, load_model, model_statuses, redundant_files
from visprog.running.plugins import default_registry
from visprog.running.runtime import Context, ModelPool, RunCache, Runtime


def test_a_download_skips_redundant_copies_of_the_weights() -> None:
    transformers_repo = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "tokenizer.json"]
    assert redundant_files(transformers_repo) == ["pytorch_model.bin"]
    diffusers_repo = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    # the unet has no full-precision safetensors: its .bin is the only fp32 copy and stays
    assert redundant_files(diffusers_repo) == [
        "vae/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert redundant_files(["pytorch_model.bin", "config.json"]) == []


def _ctx(runtime: Runtime, model: str) -> Context:
    runtime.modules["Thing"] = {"model": model}  # a module of no registry: its options are not checked
    return Context(runtime, RunCache(), "Thing", {"default": "org/thing"}, "default")


def test_models_load_once_per_loader_model_and_device(tmp_path: Path) -> None:
    runtime = Runtime(device_request="cpu")
    calls: list[str] = []

    def loader(model_id: str, placement: Placement) -> str:
        calls.append(model_id)
        return f"model from {model_id}"

    first = load_model(_ctx(runtime, str(tmp_path)), loader)
    again = load_model(_ctx(runtime, str(tmp_path)), loader)
    assert first is again and calls == [str(tmp_path)]
    load_model(_ctx(runtime, "org/other"), loader)
    assert calls == [str(tmp_path), "org/other"]


def test_a_one_argument_loader_still_loads_and_is_cast_to_the_runtimes_dtype(tmp_path: Path) -> None:
    """Plugins written for ``loader(model_id)`` keep working: their float32 model is cast afterwards."""
    torch = pytest.importorskip("torch")

    class HalfRuntime(Runtime):
        @property
        def dtype_name(self) -> str:
            return "bfloat16"

    runtime = HalfRuntime(device_request="cpu")
    seen: list[str] = []

    def loader(model_id: str) -> Any:
        seen.append(model_id)
        return torch.nn.Linear(2, 2)

    model = load_model(_ctx(runtime, str(tmp_path)), loader)
    assert seen == [str(tmp_path)]
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training


def test_missing_weights_name_the_module_the_model_and_the_fetch_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def loader(model_id: str, placement: Placement) -> object:
        raise OSError(f"We couldn't connect to the hub to load {model_id}")

    with pytest.raises(ModelUnavailableError) as info:
        load_model(_ctx(Runtime(device_request="cpu"), "org/not-cached"), loader)
    message = str(info.value)
    assert "Thing: model 'org/not-cached' is not available" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "visprog models pull Thing" in message and "hf download org/not-cached" in message


def test_other_loader_errors_are_not_disguised(tmp_path: Path) -> None:
    def loader(model_id: str, placement: Placement) -> object:
        raise ValueError("bad config value")

    with pytest.raises(ValueError, match="bad config value"):
        load_model(_ctx(Runtime(device_request="cpu"), str(tmp_path)), loader)


def test_models_list_reports_backends_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_cached(str(tmp_path)) and not is_cached("visprog-test/not-a-model")
    runtime = Runtime(modules={"Vqa": {"model": str(tmp_path)}, "FaceDet": {"backend": "cascade"}})
    specs = [default_registry()[name] for name in ("Vqa", "FaceDet", "List")]
    rows = {(r.module, r.backend): r for r in model_statuses(specs, runtime.options)}
    assert rows["Vqa", "blip"].selected and rows["Vqa", "blip"].model_id == str(tmp_path) and rows["Vqa", "blip"].cached
    assert not rows["Vqa", "vlm"].selected
    assert rows["FaceDet", "cascade"].selected and not rows["FaceDet", "cascade"].downloadable
    assert not rows["FaceDet", "yunet"].selected and not rows["FaceDet", "yunet"].cached
    assert not rows["List", "openai"].downloadable


def test_model_loads_are_reported_unless_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runtime = Runtime(device_request="cpu")
    load_model(_ctx(runtime, str(tmp_path)), lambda model_id, placement: object())
    err = capsys.readouterr().err
    assert f"Thing: loading {tmp_path}" in err and f"Thing: loaded {tmp_path} in " in err
    quiet = Runtime(device_request="cpu", progress=False)
    load_model(_ctx(quiet, str(tmp_path)), lambda model_id, placement: object())
    assert capsys.readouterr().err == ""


# --- a missing model when the hub cannot be reached ------------------------------


@pytest.fixture
def hub_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """Online, with the hub at a closed port of 127.0.0.1 and an empty cache; yields the ids model_info was asked."""
    from huggingface_hub import HfApi, constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub.forget_unreachable()
    asked: list[str] = []
    model_info = HfApi.model_info

    def counted(self: HfApi, repo_id: str, **kwargs: object) -> object:
        asked.append(repo_id)
        return model_info(self, repo_id, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(HfApi, "model_info", counted)
    yield asked
    hub.forget_unreachable()  # the closed port's failure is no one else's


def _never_called(model_id: str, placement: Placement) -> object:
    raise AssertionError(f"the loader ran for {model_id}")


def test_a_missing_model_fails_at_once_when_the_hub_cannot_be_reached(hub_down: list[str]) -> None:
    from huggingface_hub import constants

    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as info:
        load_model(_ctx(Runtime(device_request="cpu", progress=False), "org/not-cached"), _never_called)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith(
        "Thing: model 'org/not-cached' is not available (it is not in the Hugging Face cache and the hub at "
        f"{constants.ENDPOINT} could not be reached [ConnectError: "  # then the system's words: Connection refused
    ), message
    assert message.endswith(
        "]; on a machine without network, set HF_HUB_OFFLINE=1 to skip network checks). "
        "Fetch it on a machine with network access: visprog models pull Thing  (or: hf download org/not-cached)"
    ), message
    assert hub_down == ["org/not-cached"]  # one request, not retried
    # a second load (the next image of a batch) does not ask again
    with pytest.raises(ModelUnavailableError, match="could not be reached"):
        load_model(_ctx(Runtime(device_request="cpu", progress=False), "org/other"), _never_called)
    assert hub_down == ["org/not-cached"]


def test_no_probe_for_what_is_cached_local_or_not_a_hub_id(hub_down: list[str], tmp_path: Path) -> None:
    from huggingface_hub import constants

    snapshot = Path(constants.HF_HUB_CACHE) / "models--org--cached" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)  # even a partial snapshot: the loader decides whether it is enough
    onnx = tmp_path / "face.onnx"
    onnx.write_bytes(b"")
    runtime = Runtime(device_request="cpu", progress=False)
    for model_id in ("org/cached", str(tmp_path), str(onnx), "qwen2.5:7b"):
        assert load_model(_ctx(runtime, model_id), lambda m, placement: f"loaded {m}") == f"loaded {model_id}"
    assert hub_down == []


def test_no_probe_offline(hub_down: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    def loader(model_id: str, placement: Placement) -> object:
        raise OSError(f"We couldn't connect to the hub to load {model_id}")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # TRANSFORMERS_OFFLINE=1, as huggingface_hub reads it
    with pytest.raises(ModelUnavailableError, match="the hub could not be reached; on a machine without network"):
        load_model(_ctx(Runtime(device_request="cpu", progress=False), "org/not-cached"), loader)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match=r"not in the Hugging Face cache and HF_HUB_OFFLINE=1\)"):
        load_model(_ctx(Runtime(device_request="cpu", progress=False), "org/not-cached"), loader)
    assert hub_down == []


def test_a_hub_that_answers_leaves_the_error_to_the_loader(
    hub_down: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    def not_found(self: HfApi, repo_id: str, **kwargs: object) -> object:
        hub_down.append(repo_id)
        raise HfHubHTTPError("404 Client Error: Repository Not Found")

    monkeypatch.setattr(HfApi, "model_info", not_found)
    loaded = load_model(
        _ctx(Runtime(device_request="cpu", progress=False), "org/answered"), lambda m, placement: "loaded"
    )
    assert loaded == "loaded" and hub_down == ["org/answered"]


# --- loading in the runtime's precision ------------------------------------------


class BFloat16Runtime(Runtime):
    """A cpu runtime that asks for bfloat16, as a GPU runtime asks for float16."""

    @property
    def dtype_name(self) -> str:
        return "bfloat16"


def _tiny_model(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(folder)  # float32 weights, as checkpoints usually are
    return folder


def _as_hub_model(folder: Path, cache: Path, model_id: str) -> None:
    """``folder``'s files as the Hugging Face cache holds a downloaded ``model_id``."""
    import shutil

    repo = cache / f"models--{model_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_weights_load_in_the_runtimes_dtype_directly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader gets the dtype, so from_pretrained builds bfloat16 weights: no float32 copy, no cast after."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from huggingface_hub import constants

    folder = _tiny_model(tmp_path / "tiny")
    _as_hub_model(folder, tmp_path / "hub", "org/tiny-bert")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    asked: list[Any] = []
    casts: list[Any] = []
    module_to = torch.nn.Module.to

    def no_cast(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dtype") is not None or any(isinstance(a, torch.dtype) for a in args):
            casts.append((type(self).__name__, args, kwargs))
        return module_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", no_cast)

    def loader(model_id: str, placement: Placement) -> Any:
        asked.append(placement)
        return transformers.AutoModel.from_pretrained(model_id, **placement.pretrained_kwargs())

    runtime = BFloat16Runtime(device_request="cpu", progress=False)
    for model_id in (str(folder), "org/tiny-bert"):  # a folder and a hub id take the same path
        model = load_model(_ctx(runtime, model_id), loader)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        assert not model.training and model.device.type == "cpu"
    assert asked == [Placement("cpu", torch.bfloat16)] * 2
    assert Placement("cpu", torch.bfloat16).pretrained_kwargs() == {"dtype": torch.bfloat16}
    assert casts == []  # nothing was cast after loading
    assert len(runtime.pool.loads) == 2 and set(runtime.pool.loads.values()) == {1}


def test_a_model_that_is_not_a_torch_model_gets_no_dtype(tmp_path: Path) -> None:
    asked: list[Placement] = []
    runtime = Runtime(device_request="cpu", progress=False)
    load_model(_ctx(runtime, str(tmp_path)), lambda m, placement: asked.append(placement), on_device=False)
    assert asked == [Placement("cpu")] and Placement("cpu").pretrained_kwargs() == {}


# --- the pool: one lock per model ------------------------------------------------


def test_different_models_load_at_the_same_time() -> None:
    pool = ModelPool()
    both_loading = threading.Barrier(2, timeout=5)  # broken if one load waits for the other

    def slow_loader(name: str) -> Any:
        def load() -> str:
            both_loading.wait()
            time.sleep(0.1)
            return name

        return load

    with ThreadPoolExecutor(2) as threads:
        futures = [threads.submit(pool.get, name, slow_loader(name)) for name in ("a", "b")]
        assert [f.result(timeout=10) for f in futures] == ["a", "b"]
    assert pool.loads == {"a": 1, "b": 1} and [key for key, _ in pool.items()] in (["a", "b"], ["b", "a"])


def test_one_model_asked_for_by_many_threads_loads_once() -> None:
    pool = ModelPool()
    calls: list[int] = []

    def slow_load() -> object:
        calls.append(1)
        time.sleep(0.3)
        return object()

    with ThreadPoolExecutor(4) as threads:
        models = list(threads.map(lambda _: pool.get("model", slow_load), range(4)))
    assert calls == [1] and all(m is models[0] for m in models) and pool.loads == {"model": 1}
    assert "model" in pool and pool.items() == [("model", models[0])]


def test_a_failed_load_is_tried_again() -> None:
    pool = ModelPool()

    def failing() -> object:
        raise OSError("no weights")

    with pytest.raises(OSError, match="no weights"):
        pool.get("model", failing)
    assert "model" not in pool and pool.loads == {}
    assert pool.get("model", lambda: "loaded") == "loaded" and pool.loads == {"model": 1}
    pool.clear()
    assert "model" not in pool and pool.items() == []


def test_a_loader_may_load_another_model() -> None:
    """A model built from another one (a loader asking the pool) loads without a deadlock."""
    pool = ModelPool()
    outer = pool.get("outer", lambda: ("outer", pool.get("inner", lambda: "inner")))
    assert outer == ("outer", "inner") and pool.loads == {"inner": 1, "outer": 1}
