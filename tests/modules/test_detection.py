"""Tests for Loc (modules/detection.py) on tiny random Grounding DINO and OWLv2 models.

The models are built from configs, saved to a temporary folder and loaded
through the same code path as a hub id (the folder is the ``model`` option).
Random models give near-uniform scores, so thresholds are chosen from the
scores transformers itself computes, such that several boxes pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data
from visprog.modules.detection import Loc

from visprog.errors import ProgramCheckError, StepError
from visprog.language.signatures import Registry
from visprog.language.values import Detection
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Context, ModelPool, RunCache, Runtime

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BACKENDS = ["grounding-dino", "owlv2"]


# --- tiny models ----------------------------------------------------------------


def _bert_vocab(path: Path) -> Path:
    """A BertTokenizer vocabulary whose special tokens have bert-base-uncased's ids.

    Grounding DINO hard-codes the ids of [CLS], [SEP], '.' and '?' (101, 102,
    1012, 1029) to split the prompt into phrases, so the tiny vocabulary keeps them.
    """
    tokens = [f"[unused{i}]" for i in range(1030)]
    for i, t in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}.items():
        tokens[i] = t
    tokens += ["a", "the", "of", "person", "cat", "dog", "face", "rocket", "red", "car", "man", "woman", "photo"]
    path.write_text("\n".join(tokens) + "\n")
    return path


def _clip_vocab(folder: Path) -> tuple[Path, Path]:
    """A CLIPTokenizer vocabulary: single letters, a few whole words, and the merges that build them."""
    letters = list("abcdefghijklmnopqrstuvwxyz.")
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    merges = ["#version: 0.2"]
    for word in ["person", "cat", "dog", "rocket", "face", "red", "car"]:
        current = word[0]
        for k, ch in enumerate(word[1:]):
            piece = ch + ("</w>" if k == len(word) - 2 else "")
            merges.append(f"{current} {piece}")
            current += piece
            vocab.setdefault(current, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder = tmp_path_factory.mktemp("grounding-dino-tiny-random")
    tokenizer = BertTokenizer(str(_bert_vocab(tmp_path_factory.mktemp("bert") / "vocab.txt")), do_lower_case=True)
    levels: dict[str, Any] = {"out_features": ["stage2", "stage3", "stage4"]}  # read from SwinConfig's **kwargs
    backbone = SwinConfig(
        image_size=128,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        **levels,
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,  # the input projections use GroupNorm(32, d_model)
        encoder_layers=1,
        decoder_layers=2,  # the box heads of decoder layers 1.. are tied to layer 0's
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_queries=60,
        max_text_len=32,
    )
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config)
    with torch.no_grad():  # logits of order 1, as after training, rather than saturated sigmoids
        model.model.decoder.layer_norm.weight.mul_(0.1)
        model.model.decoder.layer_norm.bias.mul_(0.1)
    model.save_pretrained(folder)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 192})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_owl(folder: Path, vocab_folder: Path) -> Path:
    """A tiny random OWLv2 (seeded, heads damped) saved with its processor to ``folder``."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    vocab, merges = _clip_vocab(vocab_folder)
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=16)
    bos, eos = len(tokenizer) - 2, len(tokenizer) - 1  # <|startoftext|>, <|endoftext|>
    assert tokenizer.convert_ids_to_tokens([bos, eos]) == ["<|startoftext|>", "<|endoftext|>"]
    tiny = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = Owlv2Config(
        text_config={
            **tiny,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 16,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={**tiny, "image_size": 64, "patch_size": 8},  # 8x8 patches: 64 boxes
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(config)
    with torch.no_grad():
        # Damp the random heads' last layers, as training leaves them: boxes stay near their
        # patch's prior box and logits near the image-text similarity (otherwise sigmoids saturate).
        for layer in (model.box_head.dense2, model.class_head.logit_shift, model.class_head.logit_scale):
            layer.weight.normal_(std=0.01)
            layer.bias.zero_()
    model.save_pretrained(folder)
    image_processor = Owlv2ImageProcessorPil(size={"height": 64, "width": 64})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_owl(tmp_path_factory.mktemp("owlv2-tiny-random"), tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def folders(dino_dir: Path, owl_dir: Path) -> dict[str, Path]:
    return {"grounding-dino": dino_dir, "owlv2": owl_dir}


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut()).convert("RGB")  # 512x512


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.fromarray(data.chelsea()).convert("RGB")  # 451x300


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(data.coffee()).convert("RGB")  # 600x400


# --- transformers' own answers ----------------------------------------------------


Reference = tuple[np.ndarray, np.ndarray]  # boxes (N, 4), scores (N,)


def _as_loc_reports(boxes: np.ndarray, scores: np.ndarray, size: tuple[int, int]) -> Reference:
    """transformers' boxes as Loc reports them with NMS off: clipped to the image, boxes with
    no pixels left dropped, best score first."""
    w, h = size
    boxes = np.clip(np.asarray(boxes, dtype=float).reshape(-1, 4), 0, [w, h, w, h])
    scores = np.asarray(scores, dtype=float)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    order = np.argsort(-scores[keep], kind="stable")
    return boxes[keep][order], scores[keep][order]


def dino_reference(folder: Path, image: Image.Image, prompt: str, threshold: float) -> Reference:
    """A direct transformers call: processor, model, post_process_grounded_object_detection."""
    from transformers import (
        AutoTokenizer,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
    )

    model = GroundingDinoForObjectDetection.from_pretrained(folder).eval()
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil.from_pretrained(folder),
        tokenizer=AutoTokenizer.from_pretrained(folder),
    )
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    result = processor.post_process_grounded_object_detection(
        outputs,
        inputs["input_ids"],
        threshold=threshold,
        text_threshold=0.25,
        target_sizes=[(image.height, image.width)],
    )[0]
    return _as_loc_reports(result["boxes"].numpy(), result["scores"].numpy(), image.size)


def owl_reference(folder: Path, image: Image.Image, label: str, threshold: float) -> Reference:
    """transformers' zero-shot-object-detection pipeline (it truncates boxes to whole pixels)."""
    from transformers import AutoTokenizer, Owlv2ImageProcessorPil, pipeline

    detector = pipeline(
        "zero-shot-object-detection",
        model=str(folder),
        tokenizer=AutoTokenizer.from_pretrained(folder),
        image_processor=Owlv2ImageProcessorPil.from_pretrained(folder),
        device="cpu",
    )
    found = detector(image, candidate_labels=[label], threshold=threshold)
    assert {r["label"] for r in found} <= {label}
    boxes = [[r["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for r in found]
    return _as_loc_reports(np.array(boxes), np.array([r["score"] for r in found]), image.size)


def threshold_passing(scores: np.ndarray, n: int) -> float:
    """A threshold halfway between the n-th and (n+1)-th best score, so that n boxes pass."""
    ranked = sorted(scores.tolist(), reverse=True)
    assert len(ranked) > n
    hi, lo = ranked[n - 1], ranked[n]
    assert hi - lo > 1e-5, f"scores {ranked} too close around rank {n} to pick a threshold"
    return (hi + lo) / 2


@pytest.fixture(scope="module")
def thresholds(folders: dict[str, Path], astronaut: Image.Image) -> dict[str, float]:
    """Per backend, a threshold that lets 6 'person' boxes through on the astronaut."""
    dino = dino_reference(folders["grounding-dino"], astronaut, "person.", 0.0)
    owl = owl_reference(folders["owlv2"], astronaut, "person", 0.0)
    return {"grounding-dino": threshold_passing(dino[1], 6), "owlv2": threshold_passing(owl[1], 6)}


# --- helpers ----------------------------------------------------------------------


#: Tiny models shared by the tests' runtimes (tests that count loads bring their own pool).
POOL = ModelPool()


@pytest.fixture(autouse=True, scope="module")
def _tiny_and_fast() -> Iterator[None]:
    """One torch thread: the tiny models have nothing to split, and extra threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    POOL.clear()


def runtime(folder: Path | str, backend: str, pool: ModelPool | None = None, **options: Any) -> Runtime:
    modules = {"Loc": {"model": str(folder), "backend": backend, **options}}
    return Runtime(device_request="cpu", modules=modules, pool=pool or POOL)


def context(rt: Runtime, cache: RunCache | None = None) -> Context:
    return Context(rt, cache or RunCache(), "Loc", Loc.backends, Loc.default_backend)


def registry() -> Registry:
    reg = Registry()
    reg.register(Loc)
    return reg


def boxes_of(objects: list[Detection]) -> np.ndarray:
    return np.array([d.box for d in objects], dtype=float).reshape(-1, 4)


def box_iou(a: Any, b: Any) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes, written out independently of the code under test."""
    a, b = np.asarray(a, dtype=float).reshape(-1, 4), np.asarray(b, dtype=float).reshape(-1, 4)
    out = np.zeros((len(a), len(b)))
    for i, (ax0, ay0, ax1, ay1) in enumerate(a):
        for j, (bx0, by0, bx1, by1) in enumerate(b):
            inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
            union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def scores_of(objects: list[Detection]) -> np.ndarray:
    return np.array([d.score for d in objects], dtype=float)


def assert_same(a: list[Detection], b: list[Detection]) -> None:
    assert [d.label for d in a] == [d.label for d in b]
    np.testing.assert_allclose(scores_of(a), scores_of(b), atol=1e-5)
    np.testing.assert_allclose(boxes_of(a), boxes_of(b), atol=1e-3)


@pytest.fixture
def forward_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of the forward passes of the detection models (spied on the model classes)."""
    from transformers import GroundingDinoForObjectDetection, Owlv2ForObjectDetection

    calls: list[int] = []

    def spy(original: Any) -> Any:
        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(int(kwargs["pixel_values"].shape[0]))
            return original(self, *args, **kwargs)

        return forward

    for cls in (GroundingDinoForObjectDetection, Owlv2ForObjectDetection):
        monkeypatch.setattr(cls, "forward", spy(cls.forward))
    return calls


# --- declaration --------------------------------------------------------------------


def test_declaration() -> None:
    assert Loc.name == "Loc"
    assert set(Loc.aliases) == {"LOC", "Locate", "Detect"}
    assert Loc.batch is not None
    assert dict(Loc.backends) == {
        "grounding-dino": "IDEA-Research/grounding-dino-tiny",
        "owlv2": "google/owlv2-base-patch16-ensemble",
        "groundingdino": None,
    }
    assert Loc.default_backend == "grounding-dino"
    assert [p.name for p in Loc.params] == ["image", "object"]
    param = Loc.param("object")
    assert param is not None and "TOP" in param.description


def test_import_does_not_import_torch() -> None:
    code = "import sys, visprog.modules.detection; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_types(
    backend: str, folders: dict[str, Path], thresholds: dict[str, float], astronaut: Image.Image
) -> None:
    rt = runtime(folders[backend], backend, box_threshold=thresholds[backend], nms_iou=1.0)
    found = Loc(image=astronaut, object="Person", ctx=context(rt))
    assert isinstance(found, list) and len(found) == 6
    w, h = astronaut.size
    for d in found:
        assert isinstance(d, Detection)
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert 0.0 <= d.score <= 1.0
        assert d.label == "Person"
        assert d.mask is None
    scores = scores_of(found)
    assert np.all(np.diff(scores) <= 0), "best score first"


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_drops_overlapping_boxes(backend: str, folders: dict[str, Path], astronaut: Image.Image) -> None:
    def loc(**options: Any) -> list[Detection]:
        return Loc(image=astronaut, object="person", ctx=context(runtime(folders[backend], backend, **options)))

    # the random models' boxes overlap little: a low IoU makes NMS bite
    everything, kept = loc(box_threshold=0, nms_iou=1.0), loc(box_threshold=0, nms_iou=0.1)
    assert 0 < len(kept) < len(everything)
    iou = box_iou(boxes_of(kept), boxes_of(kept))
    np.fill_diagonal(iou, 0)
    assert float(iou.max()) <= 0.1
    # every box NMS dropped overlaps a kept box with a better score by more than the IoU
    kept_boxes = {d.box for d in kept}
    assert kept_boxes < {d.box for d in everything}
    for d in everything:
        if d.box not in kept_boxes:
            overlaps = box_iou([d.box], boxes_of(kept))[0]
            assert any(o > 0.1 and k.score >= d.score for o, k in zip(overlaps.tolist(), kept, strict=True))
    # the default IoU (0.5) keeps at least as many as 0.1; a threshold of 1 keeps nothing
    assert len(kept) <= len(loc(box_threshold=0)) <= len(everything)
    assert loc(box_threshold=1.0) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_rgb_image(backend: str, folders: dict[str, Path]) -> None:
    gray = Image.fromarray(data.camera())  # mode L, 512x512
    rgba = Image.fromarray(data.astronaut()).convert("RGBA")
    for image in (gray, rgba):
        found = Loc(image=image, object="person", ctx=context(runtime(folders[backend], backend, box_threshold=0)))
        assert found and all(0 <= d.box[0] < d.box[2] <= 512 for d in found)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_query_is_truncated(backend: str, folders: dict[str, Path], astronaut: Image.Image) -> None:
    # OWLv2's text encoder takes 16 tokens, Grounding DINO's max_text_len (32 in the tiny model)
    found = Loc(
        image=astronaut, object="person " * 40, ctx=context(runtime(folders[backend], backend, box_threshold=0))
    )
    assert found and found[0].label == ("person " * 40).strip()


class ReducedPrecisionRuntime(Runtime):
    """A cpu runtime that runs models in bfloat16, as a GPU runtime runs them in float16."""

    @property
    def dtype_name(self) -> str:
        return "bfloat16"


@pytest.mark.parametrize("backend", BACKENDS)
def test_reduced_precision_model(backend: str, folders: dict[str, Path], astronaut: Image.Image) -> None:
    options = {"Loc": {"model": str(folders[backend]), "backend": backend, "box_threshold": 0.0, "nms_iou": 1.0}}
    half = ReducedPrecisionRuntime(device_request="cpu", modules=options, pool=ModelPool())
    found = Loc(image=astronaut, object="person", ctx=context(half))
    (key,) = half.pool.loads
    loaded: tuple[Any, Any] = half.pool.get(key, lambda: pytest.fail("the model is loaded already"))
    assert next(loaded[0].parameters()).dtype == torch.bfloat16
    reference = Loc(
        image=astronaut,
        object="person",
        ctx=context(runtime(folders[backend], backend, box_threshold=0.0, nms_iou=1.0)),
    )
    assert len(found) == len(reference)
    assert all(isinstance(d.score, float) and 0 <= d.score <= 1 for d in found)
    for d in reference[:5]:  # the best boxes are found again, up to bfloat16's precision
        assert any(np.abs(np.subtract(d.box, f.box)).max() < 2 for f in found), d
    if backend == "owlv2":  # (the random Grounding DINO's logits are too large for bfloat16 to keep its scores)
        for d in reference[:5]:
            assert any(abs(d.score - f.score) < 0.01 and np.abs(np.subtract(d.box, f.box)).max() < 2 for f in found)


# --- equivalence with transformers ---------------------------------------------------------


def test_grounding_dino_matches_transformers(dino_dir: Path, chelsea: Image.Image) -> None:
    # Loc lower-cases the query and ends it with '.', as Grounding DINO expects
    threshold = threshold_passing(dino_reference(dino_dir, chelsea, "a cat.", 0.0)[1], 8)
    boxes, scores = dino_reference(dino_dir, chelsea, "a cat.", threshold)
    assert len(scores) == 8
    found = Loc(
        image=chelsea,
        object="A Cat",
        ctx=context(runtime(dino_dir, "grounding-dino", box_threshold=threshold, nms_iou=1.0)),
    )
    np.testing.assert_allclose(scores_of(found), scores, atol=1e-5)
    np.testing.assert_allclose(boxes_of(found), boxes, atol=1e-3)
    assert {d.label for d in found} == {"A Cat"}


def test_owlv2_matches_transformers_pipeline(owl_dir: Path, coffee: Image.Image) -> None:
    # coffee is 600x400: OWLv2 pads it to a 600x600 square, so a wrong mapping back would show
    threshold = threshold_passing(owl_reference(owl_dir, coffee, "cat", 0.0)[1], 12)
    boxes, scores = owl_reference(owl_dir, coffee, "cat", threshold)
    assert len(scores) == 12
    found = Loc(
        image=coffee, object="cat", ctx=context(runtime(owl_dir, "owlv2", box_threshold=threshold, nms_iou=1.0))
    )
    np.testing.assert_allclose(scores_of(found), scores, atol=1e-5)
    np.testing.assert_array_equal(np.trunc(boxes_of(found)), boxes)
    assert {d.label for d in found} == {"cat"}
    assert boxes[:, 3].max() > 300, "some boxes lie in the lower part of the image"


# --- batching --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_equals_single_calls(
    backend: str,
    folders: dict[str, Path],
    astronaut: Image.Image,
    chelsea: Image.Image,
    forward_calls: list[int],
) -> None:
    rt = runtime(folders[backend], backend, box_threshold=0.0, nms_iou=0.5)
    calls = [
        {"image": astronaut, "object": "person"},
        {"image": astronaut, "object": "red car"},
        {"image": astronaut, "object": "TOP"},
        {"image": astronaut, "object": "Face"},
    ]
    batched = Loc.batch(calls, context(rt))
    assert forward_calls == [3], "the three model queries run in one forward pass; TOP needs no model"
    forward_calls.clear()
    singles = [Loc(**call, ctx=context(rt)) for call in calls]
    assert forward_calls == [1, 1, 1]
    assert len(batched) == len(calls)
    for b, s in zip(batched, singles, strict=True):
        assert b, "box_threshold=0 keeps boxes"
        assert_same(b, s)
    assert [(d.box, d.label) for d in batched[2]] == [((0, 0, 512, 256), "TOP")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_different_images_equals_single_calls(
    backend: str,
    folders: dict[str, Path],
    astronaut: Image.Image,
    chelsea: Image.Image,
    coffee: Image.Image,
    forward_calls: list[int],
) -> None:
    rt = runtime(folders[backend], backend, box_threshold=0.0)
    calls = [
        {"image": chelsea, "object": "cat"},
        {"image": astronaut, "object": "person"},
        {"image": coffee, "object": "cat"},
    ]
    batched = Loc.batch(calls, context(rt))
    if backend == "owlv2":
        assert forward_calls == [3]  # every image is resized to the same square
    else:
        # chelsea and coffee (3:2) become 192x128, the astronaut 128x128: padding would change Swin's features
        assert sorted(forward_calls) == [1, 2]
    for call, b in zip(calls, batched, strict=True):
        assert b
        assert_same(b, Loc(**call, ctx=context(rt)))


def test_batched_steps_through_the_interpreter(
    dino_dir: Path, astronaut: Image.Image, forward_calls: list[int]
) -> None:
    program = (
        "BOX0=Loc(image=IMAGE, object='person')\n"
        "BOX1=LOC(image=IMAGE, object='dog')\n"
        "BOX2=Detect(image=IMAGE, object='cat')\n"
        "RESULT=BOX1\n"
    )
    rt = runtime(dino_dir, "grounding-dino", box_threshold=0.0)
    cache = RunCache()
    trace = Interpreter(registry(), rt).run(program, {"IMAGE": astronaut}, cache=cache)
    assert [r.batch for r in trace.records[:3]] == [3, 3, 3]
    assert forward_calls == [3]
    assert_same(trace.result, Loc(image=astronaut, object="dog", ctx=context(rt)))
    # the astronaut was preprocessed once for the three queries
    assert cache.computed == {f"Loc:grounding-dino:{dino_dir}:pixels": 1}


# --- region words ------------------------------------------------------------------------------


def test_region_words_need_no_model(chelsea: Image.Image) -> None:
    rt = runtime("visprog-test/not-a-model", "grounding-dino", pool=ModelPool())
    w, h = chelsea.size  # 451x300
    expected = {
        "TOP": (0, 0, w, h // 2),
        "bottom": (0, h // 2, w, h),
        "Left": (0, 0, w // 2, h),
        "RIGHT ": (w // 2, 0, w, h),
    }
    for word, box in expected.items():
        (found,) = Loc(image=chelsea, object=word, ctx=context(rt))
        assert found.box == box
        assert found.score == 1.0
        assert found.label == word.strip()
    assert rt.pool.loads == {}


# --- model loading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_loaded_once_for_two_steps(backend: str, folders: dict[str, Path], astronaut: Image.Image) -> None:
    program = "BOX0=Loc(image=IMAGE, object='person')\nBOX1=Loc(image=IMAGE, object='cat')\nRESULT=BOX1\n"
    rt = runtime(folders[backend], backend, pool=ModelPool())
    interpreter = Interpreter(registry(), rt, max_batch=1)  # two separate calls
    interpreter.run(program, {"IMAGE": astronaut})
    interpreter.run(program, {"IMAGE": astronaut})
    assert list(rt.pool.loads.values()) == [1]
    (key,) = rt.pool.loads
    assert str(folders[backend]) in key


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_weights_error(backend: str, astronaut: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rt = runtime("visprog-test/not-a-model", backend, pool=ModelPool())
    with pytest.raises(StepError) as e:
        Interpreter(registry(), rt).run("BOX0=Loc(image=IMAGE, object='dog')\nRESULT=BOX0\n", {"IMAGE": astronaut})
    message = str(e.value)
    assert "Loc" in message
    assert "visprog-test/not-a-model" in message
    assert "visprog models pull Loc" in message
    assert rt.pool.loads == {}


def test_empty_object_is_an_error(dino_dir: Path, astronaut: Image.Image) -> None:
    rt = runtime(dino_dir, "grounding-dino")
    with pytest.raises(StepError, match="needs an object"):  # in a variable: known when the program runs
        Interpreter(registry(), rt).run(
            "OBJ=' '\nBOX0=Loc(image=IMAGE, object=OBJ)\nRESULT=BOX0\n", {"IMAGE": astronaut}
        )
    with pytest.raises(ProgramCheckError, match=r"col 30: argument 'object' of Loc: needs an object to find, got ' '"):
        Interpreter(registry(), rt).run("BOX0=Loc(image=IMAGE, object=' ')\nRESULT=BOX0\n", {"IMAGE": astronaut})


def test_bad_option_names_it(dino_dir: Path) -> None:
    with pytest.raises(ValueError, match="Loc option 'box_threshold' must be a number"):
        runtime(dino_dir, "grounding-dino", box_threshold="high")


# --- real checkpoints -----------------------------------------------------------------------------------


def _real_runtime(backend: str) -> Runtime:
    return Runtime(modules={"Loc": {"backend": backend}})


#: A clear detection's score with each real model (OWLv2's scores run lower than Grounding DINO's).
CONFIDENT = {"grounding-dino": 0.35, "owlv2": 0.2}


def _covers(d: Detection, x: float, y: float) -> bool:
    x0, y0, x1, y1 = d.box
    return x0 <= x <= x1 and y0 <= y <= y1


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_person_on_astronaut(backend: str, astronaut: Image.Image) -> None:
    found = Loc(image=astronaut, object="person", ctx=context(_real_runtime(backend)))
    assert found
    best = found[0]
    assert best.label == "person" and best.score > CONFIDENT[backend]
    # Eileen Collins fills most of the picture: her face (skimage's face cascade finds it at
    # x 174-270, y 66-162) and her orange suit at (220, 350) are in the best box
    assert _covers(best, 222, 114) and _covers(best, 220, 350)
    assert best.area >= 0.3 * 512 * 512


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_cat_on_chelsea(backend: str, chelsea: Image.Image) -> None:
    found = Loc(image=chelsea, object="cat", ctx=context(_real_runtime(backend)))
    assert found and found[0].score > CONFIDENT[backend]
    assert found[0].label == "cat" and _covers(found[0], 225, 150)
    assert found[0].area >= 0.4 * chelsea.width * chelsea.height
    rockets = Loc(image=chelsea, object="rocket", ctx=context(_real_runtime(backend)))
    assert all(d.score < found[0].score for d in rockets)
