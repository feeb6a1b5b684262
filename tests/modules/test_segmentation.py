"""Tests for Seg (modules/segmentation.py), offline on tiny random models.

Tiny SAM and Mask2Former models are built from configs, saved to a folder and
loaded through that folder as the model id, i.e. through the same code path as
a hub id. Their random weights are scaled up so they give masks with contrast.
SAM's automatic mask generation is checked mask for mask against transformers'
own ``mask-generation`` pipeline on the same model. The ``slow`` tests run the
real checkpoints on a real photo.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data
from visprog.modules import segmentation
from visprog.modules.segmentation import SAM_EMBEDDING_CACHE, Seg, load_sam, sam_image_embedding

from visprog.errors import StepError
from visprog.language.objects import nms_indices
from visprog.language.signatures import ModuleSpec, Registry
from visprog.language.values import Detection
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Context, RunCache, Runtime

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MASK2FORMER_LABELS = ["person", "sky", "grass", "cat", "dog"]
# Options under which the tiny random SAM keeps some masks and drops others at each step: its
# predicted IoUs spread over about [0.1, 0.8], and its mask logits are small, hence the small offset.
SAM_OPTIONS: dict[str, Any] = {
    "points_per_side": 6,
    "points_per_batch": 16,  # 36 points: batches of 16, 16 and 4
    "pred_iou_thresh": 0.5,
    "stability_score_thresh": 0.8,
    "stability_score_offset": 0.02,
}


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut()).convert("RGB")  # 512x512


@pytest.fixture(scope="module")
def small_astronaut(astronaut: Image.Image) -> Image.Image:
    """Astronaut at 192x160: not square, so resizing, padding and unpadding all matter."""
    return astronaut.resize((192, 160), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import SamConfig, SamModel
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    torch.manual_seed(1)
    config = SamConfig(
        vision_config={
            "hidden_size": 32,
            "output_channels": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 128,
            "patch_size": 16,
            "window_size": 4,
            "global_attn_indexes": [1],
            "num_pos_feats": 16,  # sin + cos: 2 * 16 = the prompt encoder's and mask decoder's hidden size
            "mlp_dim": 64,
        },
        prompt_encoder_config={"hidden_size": 32, "image_size": 128, "patch_size": 16, "mask_input_channels": 8},
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )
    model = SamModel(config).eval()
    with torch.no_grad():
        # SAM's own init gives near-zero mask logits (every stability score 0): scale the weights up,
        for name, p in model.named_parameters():
            if p.ndim >= 2 or name.endswith("bias"):
                p.normal_(0.0, 0.3)
        # upscale the mask features by repeating them (no random 2x2 checkerboard): masks follow image regions,
        for conv in (model.mask_decoder.upscale_conv1, model.mask_decoder.upscale_conv2):
            conv.weight[:] = conv.weight[:, :, :1, :1]
        # and predicted IoUs spread around 0.5 instead of far outside [0, 1].
        iou_out = model.mask_decoder.iou_prediction_head.proj_out
        iou_out.weight.mul_(0.1)
        iou_out.bias.fill_(0.5)
    processor = SamImageProcessorPil(
        size={"longest_edge": 128},
        pad_size={"height": 128, "width": 128},
        mask_size={"longest_edge": 32},
        mask_pad_size={"height": 32, "width": 32},
    )
    folder = tmp_path_factory.mktemp("tiny-sam")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mask2former_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    torch.manual_seed(1)  # with these weights: a 'sky' segment and two 'dog' segments on the astronaut
    config = Mask2FormerConfig(
        backbone_config={
            "model_type": "swin",
            "image_size": 64,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 2, 2],
            "window_size": 4,
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
        },
        feature_size=32,  # the pixel decoder's GroupNorm has 32 groups
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=8,
        id2label=dict(enumerate(MASK2FORMER_LABELS)),
        label2id={name: i for i, name in enumerate(MASK2FORMER_LABELS)},
    )
    model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # contrast in the masks, confident classes, and "no object" ruled out
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.5)
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[-1] = -5.0
    processor = Mask2FormerImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    folder = tmp_path_factory.mktemp("tiny-mask2former")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def context(runtime: Runtime, cache: RunCache | None = None) -> Context:
    return Context(runtime, cache or RunCache(), "Seg", Seg.backends, Seg.default_backend)


def sam_runtime(folder: Path, **options: Any) -> Runtime:
    return Runtime(device_request="cpu", modules={"Seg": {"model": str(folder), **SAM_OPTIONS, **options}})


def registry() -> Registry:
    reg = Registry()
    reg.register(Seg)
    return reg


def check_segments(found: list[Detection], size: tuple[int, int]) -> None:
    """Typed output: masks of the image's size, boxes that are the masks' boxes, inside the image, best first."""
    w, h = size
    assert isinstance(found, list)
    for d in found:
        assert isinstance(d, Detection)
        assert d.mask is not None and d.mask.dtype == bool and d.mask.shape == (h, w)
        assert d.mask.any()
        ys, xs = np.nonzero(d.mask)
        assert d.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert 0.0 <= d.score <= 1.0
    keys = [(-d.score, -int(d.mask.sum())) for d in found if d.mask is not None]
    assert keys == sorted(keys)


# --- declaration ----------------------------------------------------------------------------------


def test_declaration_backends_and_aliases() -> None:
    assert isinstance(Seg, ModuleSpec)
    assert [p.name for p in Seg.params] == ["image"]
    assert Seg.backends == {
        "sam": "facebook/sam-vit-base",
        "mask2former": "facebook/mask2former-swin-base-coco-panoptic",
        "segment-anything": None,
    }
    assert Seg.default_backend == "sam"
    assert Seg.summary and Seg.params[0].description
    reg = registry()
    assert reg["SEG"] is Seg and reg["Segment"] is Seg and reg["seg"] is Seg
    assert segmentation.BACKENDS.keys() == Seg.backends.keys()


def test_import_does_not_import_torch() -> None:
    code = "import sys, visprog.modules.segmentation; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- SAM ------------------------------------------------------------------------------------------


def test_sam_segments_are_typed_image_sized_and_best_first(sam_dir: Path, astronaut: Image.Image) -> None:
    found = Seg(image=astronaut, ctx=context(sam_runtime(sam_dir)))
    assert len(found) >= 2
    check_segments(found, astronaut.size)
    assert {d.label for d in found} == {""}
    # the stricter default thresholds keep nothing from a random model: the thresholds are really applied
    assert (
        Seg(image=astronaut, ctx=context(sam_runtime(sam_dir, pred_iou_thresh=0.88, stability_score_thresh=0.95))) == []
    )


def test_sam_takes_grayscale_and_rgba_images(sam_dir: Path, small_astronaut: Image.Image) -> None:
    rt = sam_runtime(sam_dir, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    rgb = Seg(image=small_astronaut, ctx=context(rt))
    rgba = Seg(image=small_astronaut.convert("RGBA"), ctx=context(rt))
    assert rgb and len(rgb) == len(rgba)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(rgb, rgba, strict=True))
    gray = Seg(image=small_astronaut.convert("L"), ctx=context(rt))
    assert gray
    check_segments(gray, small_astronaut.size)


@contextlib.contextmanager
def torchvision_shim() -> Iterator[None]:
    """TEST SHIM, for running transformers' reference pipeline only.

    The mask-generation pipeline's last step (``post_process_for_mask_generation``)
    is declared ``@requires(torch, torchvision)`` and imports
    ``torchvision.ops.boxes.batched_nms``; torchvision is not installed and
    visprog never needs it. Inside this block that one function is
    :func:`batched_nms` below (same contract, on visprog's ``nms_indices``), through minimal fake modules,
    and torchvision counts as available for the ``requires`` check. Nothing
    else of torchvision is used on that path (an AttributeError would say so).
    """
    from transformers.utils import import_utils

    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.batched_nms = batched_nms  # type: ignore[attr-defined]
    ops.boxes = boxes  # type: ignore[attr-defined]
    fake = types.ModuleType("torchvision")
    fake.ops = ops  # type: ignore[attr-defined]
    _, message = import_utils.BACKENDS_MAPPING["torchvision"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torchvision", fake)
        mp.setitem(sys.modules, "torchvision.ops", ops)
        mp.setitem(sys.modules, "torchvision.ops.boxes", boxes)
        mp.setitem(import_utils.BACKENDS_MAPPING, "torchvision", (lambda: True, message))
        yield


def batched_nms(boxes: Any, scores: Any, idxs: Any, iou_threshold: float) -> Any:
    """``torchvision.ops.batched_nms``'s contract: NMS per category ``idxs``, kept indices best score first."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    boxes = boxes.float()
    offsets = idxs.to(boxes) * (boxes.max() + 1)  # categories far apart never overlap
    kept = nms_indices((boxes + offsets[:, None]).numpy(), scores.float().numpy(), iou_threshold)
    return torch.tensor(kept, dtype=torch.long)


def reference_pipeline(folder: Path) -> Any:
    from transformers import SamModel, pipeline
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    model = SamModel.from_pretrained(folder).eval()
    processor = SamImageProcessorPil.from_pretrained(folder)
    return pipeline("mask-generation", model=model, image_processor=processor, device="cpu")


def test_sam_equals_the_transformers_mask_generation_pipeline(sam_dir: Path, small_astronaut: Image.Image) -> None:
    """Same masks, scores and boxes as ``pipeline("mask-generation")`` with the same parameters.

    With a box NMS threshold of 1.0 nothing is suppressed, which compares every
    mask that passed the filters; with 0.7 the suppression is compared too.
    """
    generator = reference_pipeline(sam_dir)
    counts = {}
    for nms in (1.0, 0.7):
        found = Seg(image=small_astronaut, ctx=context(sam_runtime(sam_dir, box_nms_thresh=nms)))
        with torchvision_shim():
            expected = generator(
                small_astronaut,
                points_per_crop=SAM_OPTIONS["points_per_side"],
                points_per_batch=SAM_OPTIONS["points_per_batch"],
                pred_iou_thresh=SAM_OPTIONS["pred_iou_thresh"],
                stability_score_thresh=SAM_OPTIONS["stability_score_thresh"],
                stability_score_offset=SAM_OPTIONS["stability_score_offset"],
                crops_nms_thresh=nms,
                output_bboxes_mask=True,
            )
        assert "torchvision" not in sys.modules
        masks = [np.asarray(m, dtype=bool) for m in expected["masks"]]
        scores = expected["scores"].tolist()
        boxes = expected["bounding_boxes"].tolist()
        # the pipeline keeps empty masks (box [0, 0, 0, 0], which suppresses nothing); Seg drops them
        rows = [(m, s, b) for m, s, b in zip(masks, scores, boxes, strict=True) if m.any()]
        rows.sort(key=lambda r: (-min(max(r[1], 0.0), 1.0), -int(r[0].sum())))
        assert len(found) == len(rows)
        for d, (mask, score, (x0, y0, x1, y1)) in zip(found, rows, strict=True):
            assert np.array_equal(d.mask, mask)
            assert d.score == pytest.approx(min(max(score, 0.0), 1.0), abs=1e-7)
            assert d.box == (x0, y0, x1 + 1, y1 + 1)  # the pipeline's boxes end on the last pixel, Seg's after it
        counts[nms] = len(found)
    # the filters kept some of the 3 masks per point and dropped others; NMS then dropped more
    assert 3 * SAM_OPTIONS["points_per_side"] ** 2 > counts[1.0] > counts[0.7] >= 3


def test_sam_embedding_is_computed_once_per_image_per_run(
    sam_dir: Path, small_astronaut: Image.Image, astronaut: Image.Image
) -> None:
    rt = sam_runtime(sam_dir)
    model, _ = load_sam(context(rt))  # the pooled model every Seg call of this runtime uses
    encoder_calls: list[int] = []
    hook = model.vision_encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    try:
        interpreter = Interpreter(registry(), rt)
        program = "SEGS0=Seg(image=IMAGE)\nSEGS1=Segment(image=IMAGE)\nSEGS2=SEG(image=OTHER)\nRESULT=SEGS1\n"
        cache = RunCache()
        trace = interpreter.run(program, {"IMAGE": small_astronaut, "OTHER": astronaut}, cache=cache)
        assert len(encoder_calls) == 2  # once for IMAGE (two steps), once for OTHER
        key = SAM_EMBEDDING_CACHE.format(model_id=str(sam_dir))
        assert cache.computed[key] == 2
        first, second = trace.step("SEGS0").output, trace.step("SEGS1").output
        assert first and len(first) == len(second)
        assert all(np.array_equal(a.mask, b.mask) and a.score == b.score for a, b in zip(first, second, strict=True))
        # another module of the same run gets the embedding free
        embedding = sam_image_embedding(small_astronaut, context(rt, cache))
        assert len(encoder_calls) == 2
        assert tuple(embedding.shape) == (1, 32, 8, 8)
        # a new run computes it again
        interpreter.run("SEGS0=Seg(image=IMAGE)\nRESULT=SEGS0\n", {"IMAGE": small_astronaut})
        assert len(encoder_calls) == 3
    finally:
        hook.remove()
    sam_loads = [n for key, n in rt.pool.loads.items() if "_load_sam" in str(key[0])]
    assert sam_loads == [1]


@pytest.mark.parametrize(
    ("option", "value"), [("points_per_side", 0), ("points_per_batch", 2.5), ("pred_iou_thresh", "high")]
)
def test_sam_bad_option_is_named(sam_dir: Path, small_astronaut: Image.Image, option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"Seg option '{option}'"):
        Seg(image=small_astronaut, ctx=context(sam_runtime(sam_dir, **{option: value})))


# --- Mask2Former ----------------------------------------------------------------------------------


def m2f_runtime(folder: Path, **options: Any) -> Runtime:
    return Runtime(device_request="cpu", modules={"Seg": {"backend": "mask2former", "model": str(folder), **options}})


def reference_panoptic(folder: Path, image: Image.Image) -> list[tuple[str, float, np.ndarray]]:
    """(label, score, mask) of each segment, straight from the processor's panoptic post-processing."""
    from transformers import Mask2FormerForUniversalSegmentation
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    model = Mask2FormerForUniversalSegmentation.from_pretrained(folder).eval()
    processor = Mask2FormerImageProcessorPil.from_pretrained(folder)
    with torch.inference_mode():
        outputs = model(**processor(images=image, return_tensors="pt"))
    result = processor.post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse=set(), target_sizes=[(image.height, image.width)]
    )[0]
    seg = result["segmentation"].numpy()
    return [(MASK2FORMER_LABELS[s["label_id"]], s["score"], seg == s["id"]) for s in result["segments_info"]]


def test_mask2former_labels_come_from_id2label(mask2former_dir: Path, astronaut: Image.Image) -> None:
    found = Seg(image=astronaut, ctx=context(m2f_runtime(mask2former_dir)))
    assert len(found) >= 2
    check_segments(found, astronaut.size)
    assert all(d.label in MASK2FORMER_LABELS for d in found)
    total = np.zeros((astronaut.height, astronaut.width), dtype=int)
    for d in found:
        total += d.mask
    assert total.max() == 1  # panoptic segments do not overlap
    expected = sorted(reference_panoptic(mask2former_dir, astronaut), key=lambda r: (-r[1], -int(r[2].sum())))
    assert [(d.label, d.score) for d in found] == [(label, score) for label, score, _ in expected]
    assert all(np.array_equal(d.mask, mask) for d, (_, _, mask) in zip(found, expected, strict=True))


def test_mask2former_fuses_the_named_classes(mask2former_dir: Path, astronaut: Image.Image) -> None:
    plain = Seg(image=astronaut, ctx=context(m2f_runtime(mask2former_dir)))
    labels = [d.label for d in plain]
    repeated = next(label for label in labels if labels.count(label) > 1)
    fused = Seg(image=astronaut, ctx=context(m2f_runtime(mask2former_dir, label_ids_to_fuse=[repeated])))
    check_segments(fused, astronaut.size)
    assert [d.label for d in fused].count(repeated) == 1
    union = np.logical_or.reduce([d.mask for d in plain if d.label == repeated])
    assert np.array_equal(next(d.mask for d in fused if d.label == repeated), union)
    by_id = Seg(
        image=astronaut,
        ctx=context(m2f_runtime(mask2former_dir, label_ids_to_fuse=[MASK2FORMER_LABELS.index(repeated)])),
    )
    assert [(d.label, d.score) for d in by_id] == [(d.label, d.score) for d in fused]
    with pytest.raises(ValueError, match="unicorn"):
        Seg(image=astronaut, ctx=context(m2f_runtime(mask2former_dir, label_ids_to_fuse=["unicorn"])))


def test_mask2former_nothing_above_threshold_is_no_segment(mask2former_dir: Path, astronaut: Image.Image) -> None:
    assert Seg(image=astronaut, ctx=context(m2f_runtime(mask2former_dir, threshold=0.99999))) == []


# --- missing weights ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sam", "mask2former"])
def test_missing_weights_name_the_module_model_and_pull_command(
    backend: str, small_astronaut: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rt = Runtime(device_request="cpu", modules={"Seg": {"backend": backend, "model": "visprog-test/not-a-model"}})
    with pytest.raises(StepError) as err:
        Interpreter(registry(), rt).run("SEGS=Seg(image=IMAGE)\nRESULT=SEGS\n", {"IMAGE": small_astronaut})
    message = str(err.value)
    assert "Seg" in message and "visprog-test/not-a-model" in message
    assert "visprog models pull Seg" in message


# --- real checkpoints -----------------------------------------------------------------------------

ASTRONAUT_FACE = (175, 65, 265, 165)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


@pytest.mark.slow
def test_real_sam_segments_the_astronaut(astronaut: Image.Image) -> None:
    rt = Runtime()
    found = Seg(image=astronaut, ctx=context(rt))
    check_segments(found, astronaut.size)
    assert len(found) >= 10
    assert all(d.score > 0.88 for d in found)  # the default pred_iou_thresh
    areas = sorted((int(d.mask.sum()) for d in found), reverse=True)
    assert areas[0] >= 0.05 * 512 * 512  # large regions: suit, flag, background
    covered = np.logical_or.reduce([d.mask for d in found])
    assert covered.mean() > 0.5
    # some segment is the astronaut's face (or head)
    assert max(box_iou(d.box, ASTRONAUT_FACE) for d in found) > 0.4
    # boxes left after NMS overlap at most 0.7 (NMS sees boxes that end on the last pixel)
    boxes = [(x0, y0, x1 - 1, y1 - 1) for x0, y0, x1, y1 in (d.box for d in found)]
    assert max(box_iou(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]) <= 0.7 + 1e-6


@pytest.mark.slow
def test_real_mask2former_finds_a_person_on_the_astronaut(astronaut: Image.Image) -> None:
    rt = Runtime(modules={"Seg": {"backend": "mask2former"}})
    found = Seg(image=astronaut, ctx=context(rt))
    check_segments(found, astronaut.size)
    people = [d for d in found if d.label == "person"]
    assert people and people[0].score > 0.8
    person = max(people, key=lambda d: int(d.mask.sum()))
    # Eileen Collins fills the left two thirds of the picture: face near (215, 130), suit near (220, 350)
    assert person.mask[130, 215] and person.mask[350, 220]
    assert person.mask.mean() > 0.2
