"""Tests for Vqa on tiny random models built from configs (no download), on real photos.

The ``blip`` backend is checked against transformers' own BLIP VQA usage
(``processor(...)`` then ``BlipForQuestionAnswering.generate``): transformers 5
removed the ``visual-question-answering`` pipeline, so the model card's recipe
is the reference. The ``vlm`` backend is checked against the
``image-text-to-text`` pipeline on a tiny Idefics3 (SmolVLM's architecture).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from skimage import data
from visprog.modules import vqa
from visprog.modules.logic import Result
from visprog.modules.vqa import INSTRUCTION, Vqa, clean_answer, vlm_messages, vqa_batch

from visprog.errors import StepError
from visprog.language.signatures import Registry
from visprog.running.hub import load_model
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Context, RunCache, Runtime

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

QUESTIONS = [
    "What is the person wearing?",
    "Is there a cat?",
    "What color is the flag on the left of the astronaut's suit?",
    "How many?",
]

# --- tiny models --------------------------------------------------------------

_BLIP_WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] what is the person wearing a suit space yes no cat there ? , . ' s it man "
    "woman red blue white helmet flag two one color on left of astronaut how many mug coffee rocket"
).split()


def build_blip(folder: Path) -> None:
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    words = [*_BLIP_WORDS, "[DEC]"]  # BLIP's decoder starts every answer with [DEC] (its bos token)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    # A wide initialisation, so that answers depend on the image and the question (the default gives one answer).
    tiny = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "initializer_range": 1.0,
    }
    config = BlipConfig(
        vision_config={**tiny, "image_size": 32, "patch_size": 8},
        text_config={
            **tiny,
            "vocab_size": len(words),
            "encoder_hidden_size": 32,
            "max_position_embeddings": 64,
            "pad_token_id": words.index("[PAD]"),
            "bos_token_id": words.index("[DEC]"),
            "sep_token_id": words.index("[SEP]"),
            "eos_token_id": words.index("[SEP]"),
        },
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(config).eval()
    model.save_pretrained(folder)
    BlipProcessor(BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)


# SmolVLM's chat template.
_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _build_vlm(folder: Path) -> None:
    """A tiny Idefics3 (SmolVLM's architecture) with a byte-level tokenizer and SmolVLM's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    image_tokens = ["<fake_token_around_image>", "<image>", "<global-img>"]
    tiles = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=[*image_tokens, *tiles],
    )
    # Images are split into up to 2x2 tiles of 32 pixels plus a global view; 4 tokens per tile.
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 64}, max_image_size={"longest_edge": 32}
    )
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=4, chat_template=_CHAT_TEMPLATE)
    tiny = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = Idefics3Config(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        vision_config={**tiny, "image_size": 32, "patch_size": 8},
        text_config={
            **tiny,
            "model_type": "llama",
            "num_key_value_heads": 4,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 512,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread than on several competing ones (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tiny-blip-vqa")
    build_blip(folder)
    return str(folder)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tiny-idefics3")
    _build_vlm(folder)
    return str(folder)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(f()).convert("RGB") for f in (data.astronaut, data.chelsea, data.coffee, data.rocket)]


def make_ctx(options: dict[str, Any]) -> Context:
    runtime = Runtime(device_request="cpu", modules={"Vqa": options})
    return Context(runtime, RunCache()).for_module("Vqa", Vqa.backends, Vqa.default_backend)


def count_calls(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> list[int]:
    """Wrap ``obj.name`` so every call appends its batch size (rows of its first tensor argument)."""
    original: Callable[..., Any] = getattr(obj, name)
    calls: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = kwargs.get("input_ids", args[0] if args else None)
        calls.append(int(first.shape[0]) if first is not None else -1)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


# --- blip ---------------------------------------------------------------------


def blip_reference(folder: str, image: Image.Image, question: str, max_new_tokens: int) -> str:
    """transformers' documented BLIP VQA usage, run on a fresh copy of the model."""
    from transformers import AutoProcessor, BlipForQuestionAnswering

    processor = AutoProcessor.from_pretrained(folder)
    model = BlipForQuestionAnswering.from_pretrained(folder).eval()
    inputs = processor(images=image, text=question, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return str(processor.decode(out[0], skip_special_tokens=True)).strip().lower()


def test_blip_answers_a_string(blip_dir: str, photos: list[Image.Image]) -> None:
    answer = Vqa(image=photos[0], question=QUESTIONS[0], ctx=make_ctx({"model": blip_dir}))
    assert isinstance(answer, str)
    assert answer == answer.strip().lower()
    assert answer  # the tiny model's vocabulary is words; greedy decoding yields some


@pytest.mark.parametrize(("photo", "question"), [(0, 0), (1, 1), (0, 2)])
def test_blip_equals_transformers_reference(
    blip_dir: str, photos: list[Image.Image], photo: int, question: int
) -> None:
    ctx = make_ctx({"model": blip_dir, "max_new_tokens": 6})
    expected = blip_reference(blip_dir, photos[photo], QUESTIONS[question], max_new_tokens=6)
    assert expected  # a non-trivial comparison
    assert Vqa(image=photos[photo], question=QUESTIONS[question], ctx=ctx) == expected


def test_blip_max_new_tokens_option(blip_dir: str, photos: list[Image.Image]) -> None:
    short = Vqa(image=photos[0], question=QUESTIONS[0], ctx=make_ctx({"model": blip_dir, "max_new_tokens": 1}))
    long = Vqa(image=photos[0], question=QUESTIONS[0], ctx=make_ctx({"model": blip_dir, "max_new_tokens": 8}))
    assert len(short.split()) <= 1
    assert long.startswith(short)


def test_blip_batch_is_one_generate_and_equals_singles(
    blip_dir: str, photos: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx({"model": blip_dir})
    model, _ = load_model(ctx, vqa._load_blip)  # the pooled model Vqa uses
    singles = [Vqa(image=p, question=q, ctx=ctx) for p, q in zip(photos, QUESTIONS, strict=True)]
    assert len(set(singles)) > 1  # different inputs, different answers: the comparison means something
    generate_calls = count_calls(monkeypatch, model.text_decoder, "generate")
    batch = vqa_batch([{"image": p, "question": q} for p, q in zip(photos, QUESTIONS, strict=True)], ctx)
    assert generate_calls == [4]  # one generate call for the four pairs
    assert batch == singles  # questions of different lengths: padding does not change answers


def registry() -> Registry:
    reg = Registry()
    reg.register(Vqa)
    reg.register(Result)
    return reg


PROGRAM = """\
ANSWER0=Vqa(image=IMAGE, question='What is the person wearing?')
ANSWER1=VQA(image=IMAGE, question='Is there a cat?')
ANSWER2=Vqa(image=IMAGE, question='What color is the flag?')
ANSWER3=Vqa(image=IMAGE, question='How many?')
FINAL_RESULT=Result(var=ANSWER1)
"""


def test_blip_through_interpreter_batches_and_loads_once(blip_dir: str, photos: list[Image.Image]) -> None:
    runtime = Runtime(device_request="cpu", modules={"Vqa": {"model": blip_dir}})
    interpreter = Interpreter(registry(), runtime)
    first = interpreter.run(PROGRAM, {"IMAGE": photos[0]})
    second = interpreter.run(PROGRAM, {"IMAGE": photos[1]})
    assert [r.batch for r in first.records[:4]] == [4, 4, 4, 4]
    assert all(isinstance(r.output, str) for r in first.records + second.records)
    assert first.result == first.records[1].output
    assert list(runtime.pool.loads.values()) == [1]  # one model, loaded once for eight steps
    ctx = make_ctx({"model": blip_dir})
    assert first.records[1].output == Vqa(image=photos[0], question="Is there a cat?", ctx=ctx)


@pytest.mark.parametrize("which", ["empty folder", "hub id"])
def test_missing_weights_name_module_model_and_pull(tmp_path: Path, photos: list[Image.Image], which: str) -> None:
    model_id = str(tmp_path) if which == "empty folder" else "visprog-tests/no-such-vqa-model"
    runtime = Runtime(device_request="cpu", modules={"Vqa": {"model": model_id}})
    with pytest.raises(StepError) as err:
        Interpreter(registry(), runtime).run(
            "ANSWER=Vqa(image=IMAGE, question='Is it red?')\nFINAL_RESULT=Result(var=ANSWER)", {"IMAGE": photos[0]}
        )
    message = str(err.value)
    assert "Vqa" in message
    assert model_id in message
    assert "visprog models pull Vqa" in message


def test_empty_question_is_refused(blip_dir: str, photos: list[Image.Image]) -> None:
    with pytest.raises(ValueError, match="question is empty"):
        Vqa(image=photos[0], question="  ", ctx=make_ctx({"model": blip_dir}))


def test_import_does_not_import_torch() -> None:
    code = "import sys, visprog.modules.vqa; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- vlm ----------------------------------------------------------------------


def vlm_ctx(folder: str, **options: Any) -> Context:
    return make_ctx({"backend": "vlm", "model": folder, **options})


def test_vlm_prompt_has_image_question_and_instruction(vlm_dir: str) -> None:
    from transformers import AutoProcessor

    messages = vlm_messages("  What is the person wearing? ")
    assert [part["type"] for part in messages[0]["content"]] == ["image", "text"]
    processor = AutoProcessor.from_pretrained(vlm_dir)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == f"<|im_start|>User:<image>What is the person wearing? {INSTRUCTION}<end_of_utterance>\nAssistant:"


def test_vlm_processor_needs_no_torchvision(vlm_dir: str) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(vlm_dir)
    assert type(processor.image_processor).__name__ == "Idefics3ImageProcessorPil"


def test_vlm_equals_image_text_to_text_pipeline(vlm_dir: str, photos: list[Image.Image]) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

    pipe = pipeline(
        "image-text-to-text",
        model=AutoModelForImageTextToText.from_pretrained(vlm_dir),
        processor=AutoProcessor.from_pretrained(vlm_dir),
        device="cpu",
    )
    ctx = vlm_ctx(vlm_dir, max_new_tokens=5)
    for photo, question in [(photos[0], QUESTIONS[0]), (photos[1], QUESTIONS[1])]:
        messages = vlm_messages(question)
        messages[0]["content"][0] = {"type": "image", "image": photo}
        out = pipe(text=messages, max_new_tokens=5, do_sample=False, num_beams=1, return_full_text=False)
        expected = clean_answer(out[0]["generated_text"])
        assert Vqa(image=photo, question=question, ctx=ctx) == expected


def test_vlm_batch_is_one_generate_and_equals_singles(
    vlm_dir: str, photos: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = vlm_ctx(vlm_dir, max_new_tokens=6)
    model, processor = load_model(ctx, vqa._load_vlm)
    # A wide strip is split into fewer tiles than a photo: prompts of different lengths, padded image stacks.
    images = [photos[0], photos[1], photos[0].crop((0, 0, 512, 150)), photos[3]]
    tiles = [processor.image_processor(images=[im], return_tensors="pt")["pixel_values"].shape[1] for im in images]
    assert len(set(tiles)) > 1
    singles = [Vqa(image=p, question=q, ctx=ctx) for p, q in zip(images, QUESTIONS, strict=True)]
    assert all(isinstance(a, str) for a in singles)
    assert len(set(singles)) > 1
    generate_calls = count_calls(monkeypatch, model, "generate")
    batch = vqa_batch([{"image": p, "question": q} for p, q in zip(images, QUESTIONS, strict=True)], ctx)
    assert generate_calls == [4]
    assert batch == singles  # left padding and padded tiles do not change answers


def test_vlm_decodes_only_new_tokens(vlm_dir: str, photos: list[Image.Image]) -> None:
    answer = Vqa(image=photos[0], question="Unusual zebra question?", ctx=vlm_ctx(vlm_dir, max_new_tokens=4))
    assert "zebra" not in answer and "assistant" not in answer


def test_clean_answer() -> None:
    assert clean_answer("  A space suit.\nThe person is an astronaut.") == "a space suit"
    assert clean_answer("Yes!") == "yes"
    assert clean_answer("\n\n") == ""


# --- real checkpoints -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["blip", "vlm"])
def test_real_checkpoint_answers(backend: str, photos: list[Image.Image]) -> None:
    ctx = make_ctx({"backend": backend})
    astronaut, chelsea = photos[0], photos[1]
    assert "suit" in Vqa(image=astronaut, question="What is the person wearing?", ctx=ctx)
    assert Vqa(image=chelsea, question="Is there a cat?", ctx=ctx) == "yes"
    assert Vqa(image=chelsea, question="Is there a dog?", ctx=ctx) == "no"
    batch = vqa_batch(
        [
            {"image": astronaut, "question": "What is the person wearing?"},
            {"image": chelsea, "question": "Is there a cat?"},
        ],
        ctx,
    )
    assert "suit" in batch[0] and batch[1] == "yes"
