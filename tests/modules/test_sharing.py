"""Models are shared and per-image work is cached across the modules of one program.

One program runs Seg (tiny SAM), Select and Classify (one tiny CLIP), and
Replace (a tiny Stable Diffusion inpainting pipeline) on one image: each
image encoder runs once per image, and each model loads once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.modules.test_clip import _clip_folder
from tests.modules.test_inpainting import FAST, build_tiny_pipeline
from tests.modules.test_segmentation import SAM_OPTIONS, astronaut, sam_dir, small_astronaut
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import RunCache, Runtime

torch = pytest.importorskip("torch")

__all__ = ["astronaut", "sam_dir", "small_astronaut"]  # fixtures shared with the segmentation tests

PROGRAM = """\
OBJ0=Seg(image=IMAGE)
OBJ1=Select(image=IMAGE, object=OBJ0, query='person')
OBJ2=Seg(image=IMAGE)
OBJ3=Classify(image=IMAGE, object=OBJ2, categories=['person', 'sky'])
IMAGE0=Replace(image=IMAGE, object=OBJ1, prompt='a cat')
FINAL_RESULT=Result(var=IMAGE0)
"""


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clip_folder(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


def _count_forward(module: Any, calls: list[int]) -> Any:
    def hook(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
        x = args[0] if args else kwargs.get("pixel_values")
        calls.append(int(x.shape[0]) if x is not None else 1)

    return module.register_forward_hook(hook, with_kwargs=True)


def test_seg_select_classify_replace_share_models_and_image_work(
    sam_dir: Path, clip_dir: Path, sd_dir: Path, small_astronaut: Image.Image
) -> None:
    from visprog.modules.clip import _load_clip
    from visprog.modules.segmentation import load_sam

    runtime = Runtime(
        device_request="cpu",
        modules={
            "Seg": {"model": str(sam_dir), **SAM_OPTIONS},
            "Select": {"model": str(clip_dir)},
            "Classify": {"model": str(clip_dir)},
            "Replace": {"model": str(sd_dir), **FAST},
        },
    )
    registry = default_registry()
    interpreter = Interpreter(registry, runtime)
    cache = RunCache()

    # Load the pooled models first so hooks can count their encoders during the run.
    from visprog.running.hub import load_model
    from visprog.running.runtime import Context

    def ctx(name: str) -> Context:
        spec = registry[name]
        return Context(runtime, cache).for_module(spec.name, spec.backends, spec.default_backend)

    sam_model, _ = load_sam(ctx("Seg"))
    clip_model, _ = load_model(ctx("Select"), _load_clip)
    sam_calls: list[int] = []
    clip_calls: list[int] = []
    handles = [_count_forward(sam_model.vision_encoder, sam_calls), _count_forward(clip_model.vision_model, clip_calls)]
    try:
        trace = interpreter.run(PROGRAM, {"IMAGE": small_astronaut}, cache=cache)
    finally:
        for h in handles:
            h.remove()

    segments = trace.values["OBJ0"]
    assert segments, "the tiny SAM found no segment: the test would prove nothing"
    # SAM's image encoder ran once for two Seg steps on the same image
    assert sam_calls == [1]
    # CLIP encoded each segment's crop once: Classify on the same segments reused Select's crops
    assert sum(clip_calls) == len(segments)
    # each model loaded once; Select and Classify share one CLIP
    loads = {str(key[0]).rsplit(".", 1)[-1]: n for key, n in runtime.pool.loads.items()}
    assert len(loads) == 3 and set(loads.values()) == {1}, loads
    assert {"_load_sam", "_load_clip"} <= set(loads)
    # the edit happened only near the selected segment, and Classify labelled every segment
    from visprog.modules.inpainting import dilated_mask

    result, original = np.asarray(trace.result), np.asarray(small_astronaut.convert("RGB"))
    outside = ~dilated_mask(trace.values["OBJ1"], small_astronaut.size)
    assert outside.any() and np.array_equal(result[outside], original[outside])
    assert trace.step("OBJ3").output and all(o.label in ("person", "sky") for o in trace.step("OBJ3").output)
