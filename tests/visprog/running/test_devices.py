"""An explicitly requested device is checked when a model is first placed on it.

``--device cuda`` (or ``device = "cuda"`` in a config file, or
``Runtime(device_request="cuda")``) on a machine whose torch has no CUDA is a
:class:`ConfigError` that says what was asked, what there is and what to do,
reported as the step's error, not torch's ``AssertionError: Torch not compiled
with CUDA enabled``. The decision is unit-tested with torch's availability
monkeypatched, so a GPU machine is covered too; the end-to-end tests run the
tiny BLIP model of tests/modules/test_vqa.py with the torch installed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from visprog.errors import ConfigError, StepError
from visprog.running.runtime import Runtime, check_device, resolve_device

torch = pytest.importorskip("torch")

NO_CUDA_HERE = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int, *, cuda_build: str | None = "12.8") -> None:
    """Make torch report ``count`` CUDA GPUs (none: not available), from a CUDA build or not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.version, "cuda", cuda_build)


def _mps(monkeypatch: pytest.MonkeyPatch, *, built: bool, available: bool) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: built)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: available)


# --- the decision ----------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1", "cpu"])
def test_a_gpu_machine_accepts_its_devices(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    _gpus(monkeypatch, 2)
    check_device(device)
    assert resolve_device(device) == device
    assert Runtime(device_request=device).device == device


def test_auto_picks_cuda_then_mps_then_cpu_without_complaint(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 1)
    assert resolve_device(None) == resolve_device("auto") == "cuda"
    _gpus(monkeypatch, 0, cuda_build=None)
    _mps(monkeypatch, built=True, available=True)
    assert resolve_device(None) == "mps"
    _mps(monkeypatch, built=False, available=False)
    assert resolve_device(None) == resolve_device("auto") == Runtime().device == "cpu"


def test_cuda_on_a_torch_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0, cuda_build=None)
    for device in ("cuda", "cuda:3"):
        with pytest.raises(ConfigError) as info:
            check_device(device)
        assert str(info.value) == (
            f"device '{device}' was requested (--device, the config file's device = ..., or "
            f"Runtime(device_request=...)) but this torch ({torch.__version__}) has no CUDA: use --device cpu, "
            "or install a CUDA build of torch (https://pytorch.org/get-started/locally/; with the Makefile: "
            "make clean setup TORCH=...)"
        )


def test_cuda_on_a_cuda_torch_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0, cuda_build="12.8")
    with pytest.raises(ConfigError, match=r"^device 'cuda' was requested .* finds no CUDA GPU") as info:
        check_device("cuda")
    assert f"({torch.__version__}, CUDA 12.8)" in str(info.value)
    assert "CUDA_VISIBLE_DEVICES" in str(info.value) and "use --device cpu" in str(info.value)


@pytest.mark.parametrize(
    ("count", "device", "hint"),
    [
        (1, "cuda:1", "has 1 CUDA GPU (cuda:0): use --device cuda:0, or --device cuda"),
        (2, "cuda:3", "has 2 CUDA GPUs (cuda:0, cuda:1): use --device cuda:0 to cuda:1, or --device cuda"),
    ],
)
def test_a_gpu_index_past_the_last_gpu(monkeypatch: pytest.MonkeyPatch, count: int, device: str, hint: str) -> None:
    _gpus(monkeypatch, count)
    with pytest.raises(ConfigError) as info:
        check_device(device)
    assert str(info.value).startswith(f"device '{device}' was requested (")
    assert str(info.value).endswith(f"but this machine {hint}")


def test_mps_when_it_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    _mps(monkeypatch, built=True, available=True)
    check_device("mps")
    _mps(monkeypatch, built=True, available=False)
    with pytest.raises(ConfigError, match=r"^device 'mps' was requested .* finds no MPS device .*use --device cpu$"):
        check_device("mps")
    _mps(monkeypatch, built=False, available=False)
    with pytest.raises(ConfigError, match=r"is not built with MPS \(MPS needs an Apple-silicon Mac"):
        check_device("mps")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1:2"])
def test_a_device_torch_does_not_know(device: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_device(device)
    assert str(info.value).endswith(
        "but torch does not know that device: use cuda, cuda:N, mps, cpu or auto (the best available)"
    )


def test_the_error_names_where_the_device_was_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 0, cuda_build=None)
    with pytest.raises(ConfigError, match=r"^device 'cuda' was requested \(the \[llm\] device option\) but"):
        resolve_device("cuda", source="the [llm] device option")


def test_the_check_waits_for_the_first_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _gpus(monkeypatch, 0, cuda_build=None)
    runtime = Runtime(device_request="cuda")  # no error yet: nothing is placed on the device
    config = tmp_path / "visprog.toml"
    config.write_text('device = "cuda"\n')
    from_file = Runtime.from_config(config)
    for r in (runtime, from_file):
        with pytest.raises(ConfigError, match="has no CUDA"):
            r.device  # noqa: B018  (the property is what a model load reads)


def test_import_visprog_stays_torch_free() -> None:
    code = (
        "import sys, visprog, visprog.running.runtime, visprog.running.hub\n"
        "visprog.running.runtime.Runtime(device_request='cuda')\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- end to end, with this machine's torch -----------------------------------------

PROGRAM = "ANSWER0=Vqa(image=IMAGE, question='what is the person wearing?')\nFINAL_RESULT=Result(var=ANSWER0)"


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("transformers")
    from tests.modules.test_vqa import build_blip

    folder = tmp_path_factory.mktemp("tiny-blip-vqa")
    build_blip(folder)
    return str(folder)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((64, 64)).save(path)
    return path


def _run(device: str | None, blip_dir: str, photo: Path) -> object:
    from visprog.running.images import load_image
    from visprog.running.interpreter import Interpreter

    runtime = Runtime(device_request=device, modules={"Vqa": {"model": blip_dir}}, progress=False)
    return Interpreter(runtime=runtime).run(PROGRAM, {"IMAGE": load_image(photo)}).result


@NO_CUDA_HERE
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_without_cuda_is_the_steps_error(blip_dir: str, photo: Path, device: str) -> None:
    with pytest.raises(StepError) as info:
        _run(device, blip_dir, photo)
    error = info.value
    assert error.module == "Vqa" and error.target == "ANSWER0"
    assert isinstance(error.cause, ConfigError)
    assert error.reason == (
        f"device '{device}' was requested (--device, the config file's device = ..., or "
        f"Runtime(device_request=...)) but this torch ({torch.__version__}) has no CUDA: use --device cpu, "
        "or install a CUDA build of torch (https://pytorch.org/get-started/locally/; with the Makefile: "
        "make clean setup TORCH=...)"
    )
    assert "AssertionError" not in str(error)


@pytest.mark.parametrize("device", ["cpu", None, "auto"])
def test_cpu_and_the_default_still_run(blip_dir: str, photo: Path, device: str | None) -> None:
    answer = _run(device, blip_dir, photo)
    assert isinstance(answer, str) and answer


@NO_CUDA_HERE
def test_the_cli_reports_it_as_a_failed_step_without_a_traceback(blip_dir: str, photo: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    options = ["--image", str(photo), "--model", f"Vqa={blip_dir}", "--device", "cuda", "-q"]
    ran = subprocess.run(
        [sys.executable, "-m", "visprog", "exec", PROGRAM, *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 1, ran.stderr
    assert "Traceback" not in ran.stderr and "AssertionError" not in ran.stderr, ran.stderr
    assert (
        f"error: line 1, Vqa (step ANSWER0) failed: device 'cuda' was requested (--device, the config file's "
        f"device = ..., or Runtime(device_request=...)) but this torch ({torch.__version__}) has no CUDA: "
        "use --device cpu"
    ) in ran.stderr
