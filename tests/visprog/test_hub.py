from __future__ import annotations

from pathlib import Path

import pytest

from visprog.errors import ModelUnavailableError
from visprog.hub import is_cached, load_model, model_statuses, redundant_files
from visprog.registry import default_registry
from visprog.runtime import Context, RunCache, Runtime


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
    runtime.set_option("Thing", "model", model)
    return Context(runtime, RunCache(), "Thing", {"default": "org/thing"}, "default")


def test_models_load_once_per_loader_model_and_device(tmp_path: Path) -> None:
    runtime = Runtime(device_request="cpu")
    calls: list[str] = []

    def loader(model_id: str) -> str:
        calls.append(model_id)
        return f"model from {model_id}"

    first = load_model(_ctx(runtime, str(tmp_path)), loader)
    again = load_model(_ctx(runtime, str(tmp_path)), loader)
    assert first is again and calls == [str(tmp_path)]
    load_model(_ctx(runtime, "org/other"), loader)
    assert calls == [str(tmp_path), "org/other"]


def test_missing_weights_name_the_module_the_model_and_the_fetch_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def loader(model_id: str) -> object:
        raise OSError(f"We couldn't connect to the hub to load {model_id}")

    with pytest.raises(ModelUnavailableError) as info:
        load_model(_ctx(Runtime(device_request="cpu"), "org/not-cached"), loader)
    message = str(info.value)
    assert "Thing: model 'org/not-cached' is not available" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "visprog models pull Thing" in message and "hf download org/not-cached" in message


def test_other_loader_errors_are_not_disguised(tmp_path: Path) -> None:
    def loader(model_id: str) -> object:
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
    load_model(_ctx(runtime, str(tmp_path)), lambda model_id: object())
    err = capsys.readouterr().err
    assert f"Thing: loading {tmp_path}" in err and f"Thing: loaded {tmp_path} in " in err
    quiet = Runtime(device_request="cpu", progress=False)
    load_model(_ctx(quiet, str(tmp_path)), lambda model_id: object())
    assert capsys.readouterr().err == ""
