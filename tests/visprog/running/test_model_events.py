"""Model events: a runtime tells whoever listens (Runtime.listening) which models load, download and are loaded."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from tests import fakes
from visprog.language.signatures import module
from visprog.language.values import Image
from visprog.running import hub
from visprog.running.events import Event, ModelDownload, ModelLoaded, ModelLoading
from visprog.running.hub import DownloadReport, Placement, load_model
from visprog.running.runtime import Context, RunCache, Runtime
from visprog.solving import solve

HTTP_GET_BAR = "huggingface_hub.http_get"
HERE = str(Path(__file__).resolve().parent)  # a folder: loads from it ask nothing of the hub


def _ctx(runtime: Runtime, model: str) -> Context:
    runtime.modules["Thing"] = {"model": model}  # a module of no registry: its options are not checked
    return Context(runtime, RunCache(), "Thing", {"default": "org/thing"}, "default")


def slow_loader(model_id: str, placement: Placement) -> object:
    time.sleep(0.05)
    return object()


def kinds(events: list[Any]) -> list[str]:
    return [e.kind for e in events]


def test_a_load_is_told_to_listeners_while_they_listen_only(tmp_path: Path) -> None:
    runtime = Runtime(device_request="cpu", progress=False)
    heard: list[Event] = []
    with runtime.listening(heard.append):
        first = load_model(_ctx(runtime, str(tmp_path)), slow_loader)
        assert load_model(_ctx(runtime, str(tmp_path)), slow_loader) is first  # from the pool: no load, no events
    assert kinds(heard) == ["model_loading", "model_loaded"]
    loading, loaded = heard
    assert loading == ModelLoading("Thing", str(tmp_path), "cpu")
    assert isinstance(loaded, ModelLoaded) and (loaded.module, loaded.model_id) == ("Thing", str(tmp_path))
    assert 0.05 <= loaded.seconds < 5
    assert loaded.to_dict() == {
        "kind": "model_loaded",
        "module": "Thing",
        "model_id": str(tmp_path),
        "seconds": loaded.seconds,
    }
    load_model(_ctx(runtime, HERE), slow_loader)  # after the block: nobody hears it
    assert len(heard) == 2


def test_two_listeners_hear_loads_on_other_threads(tmp_path: Path) -> None:
    runtime = Runtime(device_request="cpu", progress=False)
    first: list[Event] = []
    second: list[Event] = []
    with runtime.listening(first.append):
        with runtime.listening(second.append), ThreadPoolExecutor(2) as pool:
            models = [str(tmp_path / name) for name in ("a", "b")]
            for folder in models:
                os.mkdir(folder)
            list(pool.map(lambda m: load_model(_ctx(runtime, m), slow_loader), models))
        load_model(_ctx(runtime, HERE), slow_loader)  # the second listener has left
    assert sorted(kinds(second)) == ["model_loaded"] * 2 + ["model_loading"] * 2
    assert {e.model_id for e in second if isinstance(e, ModelLoaded)} == set(models)
    assert first[:4] == second and kinds(first[4:]) == ["model_loading", "model_loaded"]
    assert first[4] == ModelLoading("Thing", HERE, "cpu")


def test_a_listener_that_raises_does_not_break_the_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runtime = Runtime(device_request="cpu", progress=False)
    heard: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError(f"listener bug on {event.kind}")

    with caplog.at_level(logging.WARNING), runtime.listening(broken), runtime.listening(heard.append):
        model = load_model(_ctx(runtime, str(tmp_path)), lambda model_id, placement: "the model")
    assert model == "the model"
    assert kinds(heard) == ["model_loading", "model_loaded"]  # the listener after the broken one hears everything
    logged = [r for r in caplog.records if r.name == "visprog.running.runtime"]
    assert [r.exc_info[1].args[0] for r in logged if r.exc_info and r.exc_info[1]] == [
        "listener bug on model_loading",
        "listener bug on model_loaded",
    ]


def test_the_download_bar_counts_bytes_as_huggingface_hub_drives_it() -> None:
    """huggingface_hub makes one bar per file (``hf_hub_download``) with the file's size, and updates it per chunk."""
    runtime = Runtime(device_request="cpu", progress=False)
    heard: list[Event] = []
    report = DownloadReport(runtime, "Thing", "org/thing")
    with runtime.listening(heard.append):
        files = report.tqdm_class(iter(range(2)), total=2, desc="Fetching 2 files")  # counts files, not bytes
        bar = report.tqdm_class(
            desc="model.safetensors",
            total=1000,
            initial=100,
            unit="B",
            unit_scale=True,
            name="huggingface_hub.http_get",
        )
        for _ in range(9):
            bar.update(100)
        bar.close()
        files.update(2)
        files.close()
        report.finish()
        report.finish()  # nothing new: nothing sent
    assert all(isinstance(e, ModelDownload) for e in heard)
    assert heard[0] == ModelDownload("Thing", "org/thing", 100, 1000)  # the first count goes out at once
    assert heard[-1] == ModelDownload("Thing", "org/thing", 1000, 1000)  # and the last one at the end
    assert len(heard) <= 3  # nine updates within a quarter second: throttled
    assert report.progress() == (1000, 1000)


def test_a_model_from_the_hub_reports_its_download_in_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from huggingface_hub import constants

    from tests.visprog.running.test_hub_download import serve_hub

    model_id = "visprog-tests/some-bytes"
    repo = {
        "config.json": b'{"model_type": "none"}',
        "model.safetensors": os.urandom(300_000),
        "pytorch_model.bin": os.urandom(1_000),  # a second copy of the weights: not fetched
        "README.md": b"# bytes\n",
    }
    wanted = sum(len(content) for name, content in repo.items() if name != "pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub.forget_unreachable()

    def loader(model_id: str, placement: Placement) -> bytes:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model_id, "model.safetensors", local_files_only=True)).read_bytes()

    runtime = Runtime(device_request="cpu", progress=False)
    heard: list[Event] = []
    with serve_hub({model_id: repo}) as fake:
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)  # as HF_ENDPOINT sets it when huggingface_hub loads
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        with runtime.listening(heard.append):
            loaded = load_model(_ctx(runtime, model_id), loader, on_device=False)
        fetched = fake.downloaded(model_id)
    hub.forget_unreachable()
    assert loaded == repo["model.safetensors"]  # the loader found the files in the cache
    assert fetched == ["README.md", "config.json", "model.safetensors"]
    assert kinds(heard[:1]) == ["model_loading"] and kinds(heard[-1:]) == ["model_loaded"]
    downloads = heard[1:-1]
    assert downloads and all(isinstance(e, ModelDownload) for e in downloads), kinds(heard)
    last = downloads[-1]
    assert isinstance(last, ModelDownload) and (last.done, last.total) == (wanted, wanted)
    dones = [e.done for e in downloads if isinstance(e, ModelDownload)]
    assert dones == sorted(dones)


def _scale_loader(model_id: str, placement: Placement) -> float:
    time.sleep(0.02)
    return 0.5


@module()
def Weigh(image: Image, ctx: Context) -> int:
    """How heavy the image looks (a model loaded on first use, for the events).

    Args:
        image: the image to weigh.
    """
    scale = load_model(ctx, _scale_loader, model_id=HERE, on_device=False)
    return round(image.size[0] * scale)


def test_solve_tells_its_listener_the_model_loads_inside_the_step() -> None:
    from visprog.planner.scripted import scripted_planner

    registry = fakes.registry()
    registry.register_all([Weigh], source="tests")
    program = "ANSWER0=Weigh(image=IMAGE)\nFINAL_RESULT=Result(var=ANSWER0)"
    runtime = Runtime(device_request="cpu", progress=False)
    events: list[Event] = []
    solution = solve(
        "gqa",
        "How heavy is it?",
        {"IMAGE": PILImage.new("RGB", (64, 48))},
        planner=scripted_planner([program], registry=registry),
        runtime=runtime,
        on_event=events.append,
    )
    assert solution.result == 32
    order = [k for k in kinds(events) if k.startswith(("step_", "model_"))]
    assert order[:4] == ["step_started", "model_loading", "model_loaded", "step_finished"]
    loading = next(e for e in events if isinstance(e, ModelLoading))
    assert (loading.module, loading.model_id) == ("Weigh", HERE)
    runtime.emit(ModelLoaded("Weigh", HERE, 0.0))  # after solve: its listener has left
    assert sum(isinstance(e, ModelLoaded) for e in events) == 1
