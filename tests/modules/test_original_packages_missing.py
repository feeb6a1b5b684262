"""Without torchvision and the original packages, their backends say what to install.

Seg's and Mask's ``segment-anything`` backends and Loc's ``groundingdino``
backend run on segment-anything and groundingdino-py, which import
torchvision. The main venv (CPU torch) has neither; there, choosing one of
these backends fails at its first step with a message that names the module,
the backend, what is missing and how to install it. Where they are installed
(``make test-original``), tests/original/ tests the backends themselves.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from visprog.errors import StepError
from visprog.language.values import Detection, Objects
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import Runtime

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None,
    reason="torchvision is installed here: tests/original/ runs the backends instead",
)

CASES = [
    ("Seg", "segment-anything", "S=Seg(image=IMAGE)\nRESULT=S\n"),
    ("Mask", "segment-anything", "S=Mask(image=IMAGE, object=BOXES)\nRESULT=S\n"),
    ("Loc", "groundingdino", "S=Loc(image=IMAGE, object='cat')\nRESULT=S\n"),
]


@pytest.mark.parametrize(("module", "backend", "program"), CASES, ids=[c[0] for c in CASES])
def test_the_backend_says_what_to_install(module: str, backend: str, program: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"")
    rt = Runtime(device_request="cpu", modules={module: {"backend": backend, "model": str(checkpoint)}})
    inputs = {"IMAGE": Image.new("RGB", (32, 24)), "BOXES": Objects([Detection((2, 2, 20, 20), 0.9, "thing")])}
    with pytest.raises(StepError) as err:
        Interpreter(default_registry(), rt).run(program, inputs)
    message = str(err.value)
    assert f"{module}: the '{backend}' backend needs the package torchvision, which is not installed" in message
    assert "pip install -r requirements-original.txt" in message
    assert "torch==2.14.1 and torchvision==0.29.1" in message


def test_the_backends_are_listed_with_their_options() -> None:
    registry = default_registry()
    assert "segment-anything" in registry.get("Seg").backends
    assert "segment-anything" in registry.get("Mask").backends
    loc = registry.get("Loc")
    assert "groundingdino" in loc.backends
    assert {"config", "text_encoder", "image_size"} <= {o.name for o in loc.options}
    box_threshold = loc.option("box_threshold")
    assert box_threshold is not None and box_threshold.backend_defaults["groundingdino"] == 0.35
