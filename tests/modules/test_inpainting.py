"""Tests for Replace (Stable Diffusion inpainting).

Offline, the pipeline is a tiny random ``StableDiffusionInpaintPipeline``
(UNet with 9 input channels, VAE, CLIP text encoder and a CLIP tokenizer over
a 54-token vocabulary) built from configs and saved to a folder, which is then
loaded through the module's own code path as ``--model Replace=FOLDER``. Its
pixels are noise, so the tests check what does not depend on the weights:
sizes, the untouched outside, the changed inside, seeds, the safety checker
and the errors. The ``slow`` test runs the real checkpoint.
"""

from __future__ import annotations

import json
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data
from visprog.modules.inpainting import (
    DEFAULT_MODEL,
    Replace,
    default_dilation,
    dilated_mask,
    working_size,
)

from visprog.errors import ModelUnavailableError, StepError, VisprogError
from visprog.language.signatures import Registry
from visprog.language.values import Detection
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import load_plugins
from visprog.running.runtime import Context, RunCache, Runtime

FAST = {"num_inference_steps": 2, "size": 64}


def build_tiny_pipeline(folder: Path, *, flagging_safety_checker: bool = False) -> Path:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=9,  # latents, mask, masked-image latents
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(  # four blocks: 8x downsampling, like Stable Diffusion's
        block_out_channels=[32, 32, 32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=1,
    )
    tokens = ["<|startoftext|>", "<|endoftext|>"] + [c + end for end in ("", "</w>") for c in string.ascii_lowercase]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(vocab),
            max_position_embeddings=16,
        )
    )
    safety_checker, feature_extractor = None, None
    if flagging_safety_checker:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPConfig, CLIPImageProcessor

        tiny = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 1}
        safety_checker = StableDiffusionSafetyChecker(
            CLIPConfig(
                text_config={**tiny, "vocab_size": len(vocab)},
                vision_config={**tiny, "image_size": 32, "patch_size": 8},
                projection_dim=32,
            )
        )
        with torch.no_grad():  # every concept's threshold below any cosine: every image is flagged
            safety_checker.concept_embeds_weights.fill_(-2.0)
        feature_extractor = CLIPImageProcessor(crop_size=32, size=32)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=flagging_safety_checker,
    )
    pipe.save_pretrained(folder)
    if flagging_safety_checker:  # name the image processor as the real checkpoint does
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text())
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        index_file.write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a busy 2-core machine, more threads mostly wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("sd-inpainting"))


@pytest.fixture(scope="module")
def flagging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("sd-inpainting-nsfw"), flagging_safety_checker=True)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut()).convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)


def runtime_for(model: Path | str, **options: Any) -> Runtime:
    return Runtime(device_request="cpu", modules={"Replace": {"model": str(model), **FAST, **options}})


def replace(image: Image.Image, objects: list[Detection], runtime: Runtime, prompt: str = "a red car") -> Image.Image:
    ctx = Context(runtime, RunCache(), "Replace", Replace.backends, Replace.default_backend)
    return Replace(image, objects, prompt, ctx)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def face_objects() -> list[Detection]:
    """Two objects on the 128x128 astronaut: the face as an elliptical mask, the shoulder as a box."""
    yy, xx = np.ogrid[:128, :128]
    face = ((xx - 55) / 12) ** 2 + ((yy - 29) / 14) ** 2 <= 1
    return [Detection((43, 15, 67, 43), 0.9, "face", face), Detection((10, 100, 40, 128), 0.8, "shoulder")]


# --- the region -------------------------------------------------------------------------


def test_dilated_mask_is_the_union_grown_by_the_radius() -> None:
    size = (40, 30)
    box = Detection((5, 5, 10, 10))
    mask = np.zeros((30, 40), bool)
    mask[20, 30] = True
    point = Detection((30, 20, 31, 21), mask=mask)
    union = dilated_mask([box, point], size, dilate=0)
    assert union.shape == (30, 40) and union.dtype == bool
    assert union.sum() == 25 + 1 and union[5:10, 5:10].all() and union[20, 30]

    grown = dilated_mask([box, point], size, dilate=3)
    assert (grown & union).sum() == union.sum()  # it contains the union
    ys, xs = np.nonzero(grown)
    # every pixel of the grown region is within 3 pixels of the union, and every such pixel is in it
    uy, ux = np.nonzero(union)
    dist = np.sqrt((ys[:, None] - uy[None]) ** 2 + (xs[:, None] - ux[None]) ** 2).min(axis=1)
    assert dist.max() <= 3
    yy, xx = np.mgrid[:30, :40]
    all_dist = np.sqrt((yy.ravel()[:, None] - uy[None]) ** 2 + (xx.ravel()[:, None] - ux[None]) ** 2).min(axis=1)
    assert grown.ravel().sum() == (all_dist <= 3).sum()
    assert grown[20, 27] and grown[20, 33] and not grown[20, 34] and not grown[16, 33]


def test_default_dilation_is_relative_to_the_image() -> None:
    assert default_dilation((512, 512)) == 5
    assert default_dilation((1024, 300)) == 10
    assert default_dilation((64, 48)) == 1
    box = [Detection((50, 50, 60, 60))]
    assert dilated_mask(box, (512, 400)).sum() == dilated_mask(box, (512, 400), dilate=5).sum()
    assert dilated_mask(box, (512, 400)).sum() > dilated_mask(box, (512, 400), dilate=4).sum()


def test_dilated_mask_edge_cases() -> None:
    assert not dilated_mask([], (20, 10)).any()
    everything = dilated_mask([Detection((0, 0, 20, 10))], (20, 10), dilate=4)
    assert everything.all()
    with pytest.raises(ValueError, match="dilate"):
        dilated_mask([Detection((0, 0, 5, 5))], (20, 10), dilate=-1)


def test_working_size_keeps_the_aspect_ratio_in_multiples_of_8() -> None:
    assert working_size((512, 512)) == (512, 512)
    assert working_size((600, 400)) == (512, 344)
    assert working_size((300, 451)) == (344, 512)
    assert working_size((128, 128), 64) == (64, 64)
    assert working_size((2000, 100)) == (512, 64)  # no side under 64
    with pytest.raises(ValueError, match="at least 64"):
        working_size((100, 100), 32)


# --- Replace on the tiny pipeline --------------------------------------------------------------


def test_replace_keeps_every_pixel_outside_the_region(tiny: Path, astronaut: Image.Image) -> None:
    runtime = runtime_for(tiny)
    objects = face_objects()
    result = replace(astronaut, objects, runtime)
    assert isinstance(result, Image.Image)
    assert result.size == astronaut.size and result.mode == "RGB"
    assert result is not astronaut

    region = dilated_mask(objects, astronaut.size)  # the default dilation: 1 pixel at 128x128
    assert region.sum() > sum(o.region(astronaut.size).sum() for o in objects) - 10
    before, after = pixels(astronaut), pixels(result)
    assert np.array_equal(after[~region], before[~region])  # bit-identical outside
    changed = (after != before).any(axis=2)
    assert changed[region].mean() > 0.9  # the tiny model paints noise inside
    union = dilated_mask(objects, astronaut.size, dilate=0)
    assert changed[union].mean() > 0.9
    assert np.asarray(astronaut).sum() == np.asarray(astronaut.copy()).sum()  # the input is untouched


def test_replace_is_deterministic_for_a_seed(tiny: Path, astronaut: Image.Image) -> None:
    runtime = runtime_for(tiny)
    first = replace(astronaut, face_objects(), runtime)
    second = replace(astronaut, face_objects(), runtime)
    assert np.array_equal(pixels(first), pixels(second))
    assert list(runtime.pool.loads.values()) == [1]  # loaded once for both calls

    other_seed = replace(astronaut, face_objects(), runtime_for(tiny, seed=1))
    region = dilated_mask(face_objects(), astronaut.size)
    assert not np.array_equal(pixels(other_seed)[region], pixels(first)[region])
    assert np.array_equal(pixels(other_seed)[~region], pixels(first)[~region])

    other_prompt = replace(astronaut, face_objects(), runtime, prompt="a green apple")
    assert not np.array_equal(pixels(other_prompt)[region], pixels(first)[region])


def test_replace_options(tiny: Path, astronaut: Image.Image) -> None:
    objects = [Detection((40, 40, 80, 80))]
    runtime = runtime_for(
        tiny, dilate=6, size="96", guidance_scale=1.0, negative_prompt="blurry", progress="false", seed=3
    )
    result = replace(astronaut, objects, runtime)
    region = dilated_mask(objects, astronaut.size, dilate=6)
    assert region.sum() > dilated_mask(objects, astronaut.size).sum()
    before, after = pixels(astronaut), pixels(result)
    assert np.array_equal(after[~region], before[~region])
    assert (after != before).any(axis=2)[region].mean() > 0.9
    with pytest.raises(VisprogError, match=r"Replace option 'progress' must be true or false \(bool\), got 'some"):
        runtime_for(tiny, progress="sometimes")  # checked where it is given, before anything loads


class HalfOnCpu(Runtime):
    """A runtime that asks for float16 as on a GPU (torch runs these tiny float16 models on the cpu too)."""

    @property
    def dtype_name(self) -> str:
        return "float16"


def test_replace_loads_the_pipeline_in_the_runtimes_dtype(tiny: Path, astronaut: Image.Image) -> None:
    import torch

    runtime = HalfOnCpu(device_request="cpu", modules={"Replace": {"model": str(tiny), **FAST}})
    objects = [Detection((40, 40, 80, 80))]
    result = replace(astronaut, objects, runtime)
    ((_, pipe),) = runtime.pool.items()
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16
    assert pipe.device.type == "cpu"
    region = dilated_mask(objects, astronaut.size)
    before, after = pixels(astronaut), pixels(result)
    assert np.array_equal(after[~region], before[~region])
    assert (after != before).any(axis=2)[region].mean() > 0.9


def test_replace_grayscale_and_odd_sizes(tiny: Path) -> None:
    gray = Image.fromarray(data.camera()).resize((90, 50))  # mode L, 90x50: SD runs at 64x64 (multiples of 8)
    objects = [Detection((20, 10, 45, 40))]
    result = replace(gray, objects, runtime_for(tiny))
    assert result.size == (90, 50) and result.mode == "RGB"
    region = dilated_mask(objects, gray.size)
    assert np.array_equal(pixels(result)[~region], pixels(gray.convert("RGB"))[~region])


def test_no_objects_returns_the_image_without_loading_a_model(astronaut: Image.Image) -> None:
    runtime = runtime_for("visprog-test/not-a-model")
    result = replace(astronaut, [], runtime)
    assert result is not astronaut and np.array_equal(pixels(result), pixels(astronaut))
    empty = Detection((10, 10, 20, 20), mask=np.zeros((128, 128), bool))
    assert np.array_equal(pixels(replace(astronaut, [empty], runtime)), pixels(astronaut))
    assert runtime.pool.loads == {}


def test_import_loads_no_torch_or_diffusers() -> None:
    code = "import sys, visprog.modules.inpainting; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- through the interpreter ------------------------------------------------------------------


def registry() -> Registry:
    reg = Registry()
    load_plugins(reg)  # FaceDet, Result, ...
    if "Replace" not in reg:
        reg.register(Replace)
    return reg


def test_replace_in_a_program(tiny: Path) -> None:
    image = Image.fromarray(data.astronaut()).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS)
    runtime = runtime_for(tiny)
    runtime.set_option("FaceDet", "backend", "cascade")
    program = (
        "OBJ0=FaceDet(image=IMAGE)\n"
        "IMAGE0=REPLACE(image=IMAGE,object=OBJ0,prompt='a smiling cat')\n"
        "FINAL_RESULT=RESULT(var=IMAGE0)"
    )
    trace = Interpreter(registry(), runtime).run(program, {"IMAGE": image})
    faces = trace.records[0].output
    assert len(faces) == 1
    region = dilated_mask(faces, image.size)
    before, after = pixels(image), pixels(trace.result)
    assert np.array_equal(after[~region], before[~region])
    assert (after != before).any(axis=2)[region].mean() > 0.9


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_missing_weights_name_the_module_model_and_fix(offline: None, astronaut: Image.Image) -> None:
    runtime = runtime_for("visprog-test/not-a-model")
    program = "IMAGE0=Replace(image=IMAGE, object=OBJ, prompt='a cat')\nFINAL_RESULT=IMAGE0"
    with pytest.raises(StepError) as info:
        Interpreter(registry(), runtime).run(program, {"IMAGE": astronaut, "OBJ": face_objects()})
    e = info.value
    assert e.module == "Replace" and e.line == 1
    assert isinstance(e.cause, ModelUnavailableError)
    message = str(e)
    assert "'visprog-test/not-a-model' is not available" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "visprog models pull Replace" in message


def test_default_model() -> None:
    ctx = Context(Runtime(), RunCache(), "Replace", Replace.backends, Replace.default_backend)
    assert ctx.backend == "sd-inpainting"
    assert ctx.model_id == DEFAULT_MODEL == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert Replace.signature() == "Replace(image: Image, object: Objects, prompt: str) -> Image"


def test_safety_checker_flags_fail_the_step_unless_turned_off(flagging: Path, astronaut: Image.Image) -> None:
    objects = face_objects()
    program = "IMAGE0=Replace(image=IMAGE, object=OBJ, prompt='a cat')\nFINAL_RESULT=IMAGE0"
    with pytest.raises(StepError) as info:
        Interpreter(registry(), runtime_for(flagging)).run(program, {"IMAGE": astronaut, "OBJ": objects})
    assert "the safety checker flagged the edit for prompt 'a cat'" in str(info.value)
    assert "safety_checker = false" in str(info.value)

    runtime = runtime_for(flagging, safety_checker=False)
    result = replace(astronaut, objects, runtime)
    region = dilated_mask(objects, astronaut.size)
    assert (pixels(result) != pixels(astronaut)).any(axis=2)[region].mean() > 0.9
    ((_, pipe),) = runtime.pool.items()
    assert pipe.safety_checker is None


# --- the real checkpoint ----------------------------------------------------------------------


@pytest.mark.slow
def test_real_inpainting_paints_what_the_prompt_says() -> None:
    image = Image.fromarray(data.astronaut()).convert("RGB")
    face = [Detection((175, 65, 265, 165), 1.0, "face")]
    runtime = Runtime(modules={"Replace": {"num_inference_steps": 30}})
    result = replace(image, face, runtime, prompt="a bright green apple")
    assert result.size == image.size
    region = dilated_mask(face, image.size)
    before, after = pixels(image), pixels(result)
    assert np.array_equal(after[~region], before[~region])
    # skin is red over green; an apple is green over red
    green_minus_red_before = (before[region][:, 1] - before[region][:, 0]).mean()
    green_minus_red_after = (after[region][:, 1] - after[region][:, 0]).mean()
    assert green_minus_red_after > green_minus_red_before + 40
    again = replace(image, face, runtime, prompt="a bright green apple")
    assert np.array_equal(pixels(again), after)  # same seed, same edit
