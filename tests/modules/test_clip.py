"""Tests for Select and Classify (modules/clip.py).

Offline: tiny random CLIP and SigLIP models, with a CLIP tokenizer built from a
byte-level vocabulary and a SigLIP SentencePiece model trained here, saved to a
folder and loaded through the same code path as a hub id (``--model FOLDER``).
Their scores are meaningless, so the tests check structure, the masked-crop
scoring against a direct model computation, sharing, caching and batching.
The slow tests use the real checkpoints and check real answers.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data
from visprog.modules import clip
from visprog.modules.clip import Classify, Select, masked_crop

from visprog.errors import StepError
from visprog.language.signatures import Registry
from visprog.language.values import Detection, Type
from visprog.running.hub import load_model
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import specs_in
from visprog.running.runtime import Context, RunCache, Runtime

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SIDE = 32  # the tiny models' input size


# --- tiny models ------------------------------------------------------------------


def _clip_folder(path: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = list(bytes_to_unicode().values())
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **small,
            "vocab_size": len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={**small, "image_size": SIDE, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    return path


def _siglip_folder(path: Path) -> Path:
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor, SiglipTokenizer
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    sentences = [
        "a photo of a face.",
        "a photo of a rocket.",
        "a photo of a flag.",
        "a photo of a helmet.",
        "a photo of a cat.",
        "an astronaut in an orange suit",
        "the quick brown fox jumps over the lazy dog",
    ]
    path.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 10),
        model_prefix=str(path / "spm"),
        vocab_size=60,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tokenizer = SiglipTokenizer(vocab_file=str(path / "spm.model"), model_max_length=64)
    image_processor = SiglipImageProcessorPil(size={"height": SIDE, "width": SIDE})
    out = path / "model"
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = SiglipConfig(
        text_config={
            **small,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 64,
            "projection_size": 32,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 1,
        },
        vision_config={**small, "image_size": SIDE, "patch_size": 8},
    )
    model = SiglipModel(config)
    with torch.no_grad():  # SigLIP starts with scale 1 and bias 0: spread the scores a little
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-1.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clip_folder(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _siglip_folder(tmp_path_factory.mktemp("tiny-siglip"))


# --- photos and objects -------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut()).convert("RGB")  # 512x512


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(data.coffee()).convert("RGB")  # 600x400


def ellipse(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    w, h = size
    x0, y0, x1, y1 = box
    yy, xx = np.ogrid[:h, :w]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1


def astronaut_objects(size: tuple[int, int] = (512, 512)) -> list[Detection]:
    """Face (elliptical mask), space shuttle model, flag, helmet (box only), labelled like Seg's panoptic output."""
    return [
        Detection((150, 20, 300, 180), 0.9, "person", ellipse(size, (150, 20, 300, 180))),
        Detection((350, 0, 470, 280), 0.8, "airplane"),
        Detection((0, 0, 95, 330), 0.7, "banner"),
        Detection((275, 340, 510, 512), 0.6, "sports ball", ellipse(size, (275, 340, 510, 512))),
    ]


def coffee_objects() -> list[Detection]:
    return [Detection((100, 20, 480, 330), 0.9, "cup"), Detection((0, 0, 100, 100), 0.5, "table")]


# --- running ---------------------------------------------------------------------


def registry() -> Registry:
    import visprog.modules.faces as faces
    import visprog.modules.image_ops as image_ops

    reg = Registry()
    for mod in (image_ops, faces, clip):
        reg.register_all(specs_in(mod, "builtin"), source="builtin")
    return reg


def runtime_for(folder: Path | str, backend: str = "clip") -> Runtime:
    options = {"model": str(folder), "backend": backend}
    return Runtime(device_request="cpu", modules={"Select": dict(options), "Classify": dict(options)})


def context(runtime: Runtime, name: str = "Select", cache: RunCache | None = None) -> Context:
    spec = Select if name == "Select" else Classify
    return Context(runtime, cache or RunCache()).for_module(spec.name, spec.backends, spec.default_backend)


def loaded(runtime: Runtime) -> tuple[Any, Any]:
    """The (model, processor) Select and Classify use in this runtime (loads it if needed)."""
    return load_model(context(runtime), clip._load_clip)


class Counter:
    """Counts forward passes of a submodule and the batch size of each."""

    def __init__(self, submodule: Any) -> None:
        self.batches: list[int] = []
        self._handle = submodule.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        x = args[0] if args else kwargs.get("pixel_values", kwargs.get("input_ids"))
        self.batches.append(int(x.shape[0]))

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def counted(clip_dir: Path) -> Iterator[tuple[Runtime, Counter, Counter]]:
    """A fresh runtime with the tiny CLIP and counters on its vision and text encoders."""
    runtime = runtime_for(clip_dir)
    model, _ = loaded(runtime)
    vision, text = Counter(model.vision_model), Counter(model.text_model)
    yield runtime, vision, text
    vision.close()
    text.close()


def direct_logits(folder: Path, crops: list[Image.Image], texts: list[str]) -> Any:
    """(crops, texts) logits straight from the model's own forward, as its model card shows."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    siglip = "siglip" in model.config.model_type
    padding: dict[str, Any] = {"padding": "max_length", "max_length": 64} if siglip else {"padding": True}
    inputs = processor(text=texts, images=crops, return_tensors="pt", **padding)
    with torch.inference_mode():
        return model(**inputs).logits_per_image


def expected_crop(image: Image.Image, det: Detection, fill: tuple[int, int, int]) -> Image.Image:
    """For a square box 100 px wide well inside the image: a 110 px square, 5 px margin, outside the region grey."""
    x0, y0, x1, y1 = (int(v) for v in det.box)
    assert x1 - x0 == y1 - y0 == 100
    window = (x0 - 5, y0 - 5, x1 + 5, y1 + 5)
    pixels = np.asarray(image)[window[1] : window[3], window[0] : window[2]].copy()
    region = det.region(image.size)[window[1] : window[3], window[0] : window[2]]
    pixels[~region] = fill
    return Image.fromarray(pixels)


# --- declaration ---------------------------------------------------------------------


def test_import_loads_no_torch() -> None:
    code = "import sys, visprog.modules.clip; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_declarations() -> None:
    assert Select.aliases == ("SELECT",) and Classify.aliases == ("CLASSIFY",)
    assert (
        Select.signature()
        == "Select(image: Image, object: Objects, query: str, category: str | None = None) -> Objects"
    )
    assert Classify.signature() == "Classify(image: Image, object: Objects, categories: list[str]) -> Objects"
    for spec in (Select, Classify):
        assert spec.batch is not None and spec.context_param == "ctx"
        assert dict(spec.backends) == {
            "clip": "openai/clip-vit-large-patch14",
            "siglip": "google/siglip-base-patch16-224",
        }
        assert spec.default_backend == "clip"
        assert all(p.description for p in spec.params)
    categories = Classify.param("categories")
    assert categories is not None and categories.type is Type.LIST_STR


# --- the masked crop ------------------------------------------------------------------


def test_masked_crop_keeps_the_object_and_greys_the_rest(astronaut: Image.Image) -> None:
    face = astronaut_objects()[0]
    crop = masked_crop(astronaut, face, (1, 2, 3))
    # a square around the 150x160 box, 5% of its longer side added on each side
    assert crop.size == (176, 176)
    arr = np.asarray(crop)
    left, top = 225 - 88, 100 - 88
    region = face.region(astronaut.size)[top : top + 176, left : left + 176]
    source = np.asarray(astronaut)[top : top + 176, left : left + 176]
    assert np.array_equal(arr[region], source[region])
    assert (arr[~region] == (1, 2, 3)).all()
    assert region.sum() > 0.6 * 150 * 160  # the ellipse fills most of its box


def test_masked_crop_of_a_box_at_the_edge_pads_outside_the_image(astronaut: Image.Image) -> None:
    det = Detection((0, 400, 40, 512))  # no mask: the box is the region
    fill = (1, 254, 3)
    arr = np.asarray(masked_crop(astronaut, det, fill))
    assert arr.shape == (124, 124, 3)  # 112 * 1.1 rounded up
    filled = (arr == fill).all(axis=2)
    assert filled.sum() == 124 * 124 - 40 * 112  # only the box's own pixels come from the image
    # the box, centred (42 px of padding left of the image's edge), its bottom at the image's bottom edge
    assert not filled[6:118, 42:82].any()
    assert np.array_equal(arr[6:118, 42:82], np.asarray(astronaut)[400:512, 0:40])
    assert filled[118:].all() and filled[:, :42].all()


# --- Select ----------------------------------------------------------------------------


def test_select_returns_scored_objects_with_their_masks(clip_dir: Path, astronaut: Image.Image) -> None:
    objs = astronaut_objects()
    out = Select(image=astronaut, object=objs, query="face", ctx=context(runtime_for(clip_dir)))
    assert len(out) == 1
    (best,) = out
    assert isinstance(best, Detection)
    source = next(o for o in objs if o.box == best.box)
    assert best.label == source.label and best.mask is source.mask
    assert 0.0 <= best.score <= 1.0
    assert best.score >= 1 / len(objs)  # the argmax of a softmax over the candidates


def test_select_one_object_per_query_deduplicated_best_first(clip_dir: Path, astronaut: Image.Image) -> None:
    ctx = context(runtime_for(clip_dir))
    objs = astronaut_objects()
    queries = ["face", "space shuttle", "flag", "helmet", "orange suit"]
    singles = {q: Select(image=astronaut, object=objs, query=q, ctx=ctx)[0] for q in queries}
    out = Select(image=astronaut, object=objs, query=" , ".join(queries), ctx=ctx)
    boxes = [d.box for d in out]
    assert len(boxes) == len(set(boxes))  # each object once
    assert set(boxes) == {d.box for d in singles.values()}
    for d in out:  # an object picked by several queries keeps its best score
        assert d.score == pytest.approx(max(s.score for s in singles.values() if s.box == d.box), abs=1e-6)
    assert [d.score for d in out] == sorted((d.score for d in out), reverse=True)
    assert len(Select(image=astronaut, object=objs, query="flag,flag, flag", ctx=ctx)) == 1


def test_select_category_keeps_objects_with_that_label(clip_dir: Path, astronaut: Image.Image) -> None:
    ctx = context(runtime_for(clip_dir))
    objs = astronaut_objects()
    unfiltered = Select(image=astronaut, object=objs, query="face", ctx=ctx)[0]
    other = next(o for o in objs if o.box != unfiltered.box)
    out = Select(image=astronaut, object=objs, query="face", category=other.label, ctx=ctx)
    assert [d.box for d in out] == [other.box]
    assert out[0].score == pytest.approx(1.0)  # the only candidate
    # panoptic labels: 'sky-other-merged' is a 'sky'; several categories may be given
    labelled = [objs[0].with_label("sky-other-merged"), objs[1].with_label("tree-merged"), objs[2]]
    assert [d.box for d in Select(image=astronaut, object=labelled, query="x", category="sky", ctx=ctx)] == [
        objs[0].box
    ]
    both = Select(image=astronaut, object=labelled, query="a,b,c", category="sky, tree", ctx=ctx)
    assert {d.box for d in both} <= {objs[0].box, objs[1].box}
    # no object has the category: all are candidates
    fallback = Select(image=astronaut, object=objs, query="face", category="unicorn", ctx=ctx)
    assert [(d.box, d.score) for d in fallback] == [(unfiltered.box, unfiltered.score)]


def test_select_with_no_objects_is_empty_and_loads_nothing(clip_dir: Path, astronaut: Image.Image) -> None:
    runtime = runtime_for(clip_dir)
    assert Select(image=astronaut, object=[], query="face", ctx=context(runtime)) == []
    assert Classify(image=astronaut, object=[], categories=["a", "b"], ctx=context(runtime, "Classify")) == []
    assert runtime.pool.loads == {}


def test_select_needs_a_query(clip_dir: Path, astronaut: Image.Image) -> None:
    with pytest.raises(ValueError, match="needs a query"):
        Select(image=astronaut, object=astronaut_objects(), query=" , ", ctx=context(runtime_for(clip_dir)))


# --- Classify ----------------------------------------------------------------------------


def test_classify_labels_every_object_from_the_list(clip_dir: Path, astronaut: Image.Image) -> None:
    ctx = context(runtime_for(clip_dir), "Classify")
    objs = astronaut_objects()
    cats = ["face", "space shuttle", "flag", "helmet"]
    out = Classify(image=astronaut, object=objs, categories=cats, ctx=ctx)
    assert sorted(d.box for d in out) == sorted(o.box for o in objs)
    assert all(d.label in cats for d in out)
    assert all(1 / len(cats) <= d.score <= 1.0 for d in out)  # the max of a softmax over the categories
    assert [d.score for d in out] == sorted((d.score for d in out), reverse=True)
    masks = {o.box: o.mask for o in objs}
    assert all(d.mask is masks[d.box] for d in out)
    # a comma-separated string is a list; one category labels everything (weighed against 'other')
    assert {d.label for d in Classify(image=astronaut, object=objs, categories="helmet", ctx=ctx)} == {"helmet"}
    split = Classify(image=astronaut, object=objs, categories="face, space shuttle,flag,helmet", ctx=ctx)
    assert [(d.box, d.label) for d in split] == [(d.box, d.label) for d in out]
    with pytest.raises(ValueError, match="at least one category"):
        Classify(image=astronaut, object=objs, categories=[" "], ctx=ctx)


def test_scores_are_the_models_own_on_the_masked_crop(clip_dir: Path, astronaut: Image.Image) -> None:
    """One object: Classify's probabilities equal CLIP's softmax on the masked crop, computed directly."""
    from transformers import AutoProcessor

    runtime = runtime_for(clip_dir)
    face = Detection((170, 40, 270, 140), 0.9, "face", ellipse(astronaut.size, (170, 40, 270, 140)))
    flag = Detection((10, 100, 110, 200), 0.9, "flag")
    mean = AutoProcessor.from_pretrained(clip_dir).image_processor.image_mean
    fill = tuple(round(255 * m) for m in mean)
    assert fill == (123, 117, 104)  # CLIP's mean colour: it normalises to zero
    cats = ["face", "flag", "rocket"]
    logits = direct_logits(
        clip_dir, [expected_crop(astronaut, d, fill) for d in (face, flag)], [f"a photo of {c}." for c in cats]
    )
    probs = logits.softmax(dim=1)
    for k, det in enumerate((face, flag)):
        (got,) = Classify(image=astronaut, object=[det], categories=cats, ctx=context(runtime, "Classify"))
        best = int(probs[k].argmax())
        assert got.label == cats[best]
        assert got.score == pytest.approx(float(probs[k, best]), abs=1e-5)
    # Select: for each query, the softmax over the two objects
    per_object = logits.softmax(dim=0)
    for qi, q in enumerate(cats):
        (got,) = Select(image=astronaut, object=[face, flag], query=q, ctx=context(runtime))
        best = int(per_object[:, qi].argmax())
        assert got.box == (face, flag)[best].box
        assert got.score == pytest.approx(float(per_object[best, qi]), abs=1e-5)


# --- SigLIP ----------------------------------------------------------------------------


def test_siglip_backend_scores_with_sigmoids(siglip_dir: Path, astronaut: Image.Image) -> None:
    runtime = runtime_for(siglip_dir, backend="siglip")
    face = Detection((170, 40, 270, 140), 0.9, "face", ellipse(astronaut.size, (170, 40, 270, 140)))
    flag = Detection((10, 100, 110, 200), 0.9, "flag")
    cats = ["face", "flag", "rocket"]
    crops = [expected_crop(astronaut, d, (128, 128, 128)) for d in (face, flag)]
    probs = direct_logits(siglip_dir, crops, [f"a photo of {c}." for c in cats]).sigmoid()
    out = Classify(image=astronaut, object=[face, flag], categories=cats, ctx=context(runtime, "Classify"))
    for k, det in enumerate((face, flag)):
        got = next(d for d in out if d.box == det.box)
        best = int(probs[k].argmax())
        assert got.label == cats[best]
        assert got.score == pytest.approx(float(probs[k, best]), abs=1e-5)
    # Select: the object with the highest sigmoid per query; one query alone need not score 1
    for qi, q in enumerate(cats):
        (got,) = Select(image=astronaut, object=[face, flag], query=q, ctx=context(runtime))
        best = int(probs[:, qi].argmax())
        assert got.box == (face, flag)[best].box
        assert got.score == pytest.approx(float(probs[best, qi]), abs=1e-5)
    (alone,) = Select(image=astronaut, object=[face], query="face", ctx=context(runtime))
    assert alone.score == pytest.approx(float(probs[0, 0]), abs=1e-5) and alone.score < 1.0


def test_siglip_pads_prompts_to_64_tokens(siglip_dir: Path, astronaut: Image.Image) -> None:
    runtime = runtime_for(siglip_dir, backend="siglip")
    model, _ = loaded(runtime)
    lengths: list[int] = []
    handle = model.text_model.register_forward_hook(
        lambda m, a, kw, o: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        Select(image=astronaut, object=astronaut_objects(), query="face", ctx=context(runtime))
    finally:
        handle.remove()
    assert lengths == [64]


# --- through the interpreter: sharing, caching, batching, errors ------------------------------------


PROGRAM = """
OBJ1=SELECT(image=IMAGE,object=OBJS,query='face,helmet',category=None)
OBJ2=CLASSIFY(image=IMAGE,object=OBJ1,categories=['woman','man'])
RESULT=OBJ2
"""


def test_program_runs_select_then_classify_on_one_shared_model(clip_dir: Path, astronaut: Image.Image) -> None:
    runtime = runtime_for(clip_dir)
    trace = Interpreter(registry(), runtime=runtime).run(PROGRAM, {"IMAGE": astronaut, "OBJS": astronaut_objects()})
    result = trace.result
    assert 1 <= len(result) <= 2
    assert all(d.label in ("woman", "man") and 0 <= d.score <= 1 for d in result)
    keys = [k for k in runtime.pool.loads if k[0] == "visprog.modules.clip._load_clip"]
    assert keys == [("visprog.modules.clip._load_clip", str(clip_dir), "cpu", "float32")]
    assert runtime.pool.loads[keys[0]] == 1
    assert len(runtime.pool.loads) == 1


def test_crops_seen_before_skip_the_vision_encoder(
    counted: tuple[Runtime, Counter, Counter], astronaut: Image.Image
) -> None:
    runtime, vision, text = counted
    objs = astronaut_objects()
    cache = RunCache()
    program = """
OBJ1=SELECT(image=IMAGE,object=OBJS,query='face')
OBJ2=CLASSIFY(image=IMAGE,object=OBJS,categories='face,flag')
RESULT=OBJ2
"""
    Interpreter(registry(), runtime=runtime).run(program, {"IMAGE": astronaut, "OBJS": objs}, cache=cache)
    assert vision.batches == [4]  # Select encoded the four crops; Classify reused them
    assert text.batches == [1, 1]  # 'face', then only the new 'flag'
    # a new object (same box as the face but no mask: another crop) and equal copies of seen ones
    copies = [Detection(o.box, 0.1, "copy", None if o.mask is None else o.mask.copy()) for o in objs]
    extra = Detection(objs[0].box, 0.5, "box only")
    Classify(image=astronaut, object=[*copies, extra], categories=["face"], ctx=context(runtime, "Classify", cache))
    assert vision.batches == [4, 1]
    assert text.batches == [1, 1, 1]  # 'other', the contrast class of a single category
    # another run starts with an empty cache
    Select(image=astronaut, object=objs, query="face", ctx=context(runtime))
    assert vision.batches == [4, 1, 4]


def test_batched_calls_equal_single_calls(
    counted: tuple[Runtime, Counter, Counter], astronaut: Image.Image, coffee: Image.Image
) -> None:
    runtime, vision, text = counted
    calls = [
        {"image": astronaut, "object": astronaut_objects(), "query": "face,flag", "category": None},
        {"image": coffee, "object": coffee_objects(), "query": "cup", "category": None},
        {"image": astronaut, "object": [], "query": "face", "category": None},
        {"image": astronaut, "object": astronaut_objects()[:2], "query": "helmet", "category": "airplane"},
    ]
    batched = clip._select_batch(calls, context(runtime))
    assert vision.batches == [6]  # the crops of both images in one pass (the last call's crop is one of the first's)
    assert text.batches == [4]  # every prompt in one pass
    singles = [Select(**call, ctx=context(runtime)) for call in calls]
    assert len(vision.batches) == 1 + 3  # one pass per single call that has objects
    assert batched[2] == [] and len(batched[3]) == 1
    for b, s in zip(batched, singles, strict=True):
        assert [(d.box, d.label) for d in b] == [(d.box, d.label) for d in s]
        assert [d.score for d in b] == pytest.approx([d.score for d in s], abs=1e-5)

    vision.batches.clear()
    classify_calls = [
        {"image": astronaut, "object": astronaut_objects(), "categories": ["face", "flag"]},
        {"image": coffee, "object": coffee_objects(), "categories": ["cup"]},
    ]
    batched = clip._classify_batch(classify_calls, context(runtime, "Classify"))
    assert vision.batches == [6]
    singles = [Classify(**call, ctx=context(runtime, "Classify")) for call in classify_calls]
    for b, s in zip(batched, singles, strict=True):
        assert [(d.box, d.label) for d in b] == [(d.box, d.label) for d in s]
        assert [d.score for d in b] == pytest.approx([d.score for d in s], abs=1e-5)


def test_interpreter_batches_select_steps_that_are_ready_together(
    counted: tuple[Runtime, Counter, Counter], astronaut: Image.Image, coffee: Image.Image
) -> None:
    runtime, vision, _ = counted
    program = """
OBJ1=SELECT(image=IMAGE,object=OBJS,query='face')
OBJ2=SELECT(image=OTHER,object=CUPS,query='cup')
RESULT=OBJ1
"""
    inputs = {"IMAGE": astronaut, "OBJS": astronaut_objects(), "OTHER": coffee, "CUPS": coffee_objects()}
    trace = Interpreter(registry(), runtime=runtime).run(program, inputs)
    assert [r.batch for r in trace.records[:2]] == [2, 2]
    assert vision.batches == [6]
    single = Select(image=astronaut, object=astronaut_objects(), query="face", ctx=context(runtime))
    assert [(d.box, d.score) for d in trace.result] == [(d.box, pytest.approx(d.score, abs=1e-5)) for d in single]


def test_missing_weights_name_the_module_the_model_and_the_command(astronaut: Image.Image) -> None:
    runtime = runtime_for("visprog-tests/no-such-clip-model")
    with pytest.raises(StepError) as err:
        Interpreter(registry(), runtime=runtime).run(PROGRAM, {"IMAGE": astronaut, "OBJS": astronaut_objects()})
    message = str(err.value)
    assert "Select" in message
    assert "visprog-tests/no-such-clip-model" in message
    assert "visprog models pull Select" in message


def test_a_folder_without_a_model_is_reported(tmp_path: Path, astronaut: Image.Image) -> None:
    runtime = runtime_for(tmp_path)
    with pytest.raises(StepError, match="visprog models pull Classify"):
        Interpreter(registry(), runtime=runtime).run(
            "OBJ1=CLASSIFY(image=IMAGE,object=OBJS,categories='a,b')\nRESULT=OBJ1",
            {"IMAGE": astronaut, "OBJS": astronaut_objects()},
        )


# --- real checkpoints -------------------------------------------------------------------


def _real_runtime(backend: str) -> Runtime:
    return Runtime(modules={"Select": {"backend": backend}, "Classify": {"backend": backend}})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["clip", "siglip"])
def test_real_model_picks_the_rocket(backend: str) -> None:
    rocket = Image.fromarray(data.rocket()).convert("RGB")  # 640x427
    objs = [
        Detection((0, 0, 90, 420), 0.9, "tower"),  # the lattice tower on the left
        Detection((100, 0, 280, 110), 0.9, "sky"),  # empty evening sky
        Detection((295, 120, 350, 410), 0.9, "rocket"),  # the rocket on its pad
    ]
    (got,) = Select(image=rocket, object=objs, query="rocket", ctx=context(_real_runtime(backend)))
    assert got.box == objs[2].box


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["clip", "siglip"])
def test_real_model_selects_and_classifies_the_astronaut_photo(backend: str, astronaut: Image.Image) -> None:
    runtime = _real_runtime(backend)
    objs = astronaut_objects()
    by_query = {
        "face": objs[0].box,
        "space shuttle": objs[1].box,
        "american flag": objs[2].box,
        "helmet": objs[3].box,
    }
    for query, box in by_query.items():
        (got,) = Select(image=astronaut, object=objs, query=query, ctx=context(runtime))
        assert got.box == box, query
    out = Select(image=astronaut, object=objs, query="face,helmet", ctx=context(runtime))
    assert {d.box for d in out} == {objs[0].box, objs[3].box}
    labels = {
        d.box: d.label
        for d in Classify(image=astronaut, object=objs, categories=list(by_query), ctx=context(runtime, "Classify"))
    }
    assert labels == {box: query for query, box in by_query.items()}
