"""Vqa: answer a question about an image in a word or two.

Backends (``--backend Vqa=NAME``):

- ``blip`` (default): ``Salesforce/blip-vqa-capfilt-large``, BLIP's VQA model
  (vision encoder, question encoder, answer decoder). Short, VQAv2-style
  answers ("yes", "2", "red").
- ``vlm``: a small chat vision-language model loaded with
  ``AutoModelForImageTextToText`` (default ``HuggingFaceTB/SmolVLM-256M-Instruct``),
  prompted to answer in a word or two. Any image-text-to-text chat checkpoint
  whose processor has a chat template works through ``--model Vqa=ID``.

Options (``[modules.Vqa]`` in the config): ``max_new_tokens`` (default 10 for
``blip``, 20 for ``vlm``).

Steps that are ready together are answered in one batch: one ``generate`` call
for all (image, question) pairs, each answer equal to the one the pair gets on
its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from visprog.language.signatures import Option, module
from visprog.language.values import Image
from visprog.running.hub import Placement, load_model
from visprog.running.runtime import Context

__all__ = ["INSTRUCTION", "Vqa", "clean_answer", "vlm_messages", "vqa_batch"]

#: Appended to the question for chat models, which otherwise answer in sentences.
INSTRUCTION = "Answer in a word or two."

#: Vqa's options (``[modules.Vqa]`` in the config file, ``--option Vqa.NAME=VALUE``).
OPTIONS = [
    Option(
        "max_new_tokens",
        int,
        None,
        "the longest answer, in tokens (at least 1)",
        backend_defaults={"blip": 10, "vlm": 20},
    ),
]


def clean_answer(text: str) -> str:
    """The answer as the program sees it: its first line, stripped, lower-cased, without a final period."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first.rstrip(".!").strip().lower()


def _max_new_tokens(ctx: Context) -> int:
    value = int(ctx.option("max_new_tokens"))
    if value < 1:
        raise ValueError(f"Vqa option max_new_tokens must be at least 1, got {value}")
    return value


def _to_device(inputs: Mapping[str, Any], model: Any, device: str) -> dict[str, Any]:
    """Tensors on the model's device; floating-point ones (pixels) in the model's dtype."""
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if hasattr(value, "to"):
            value = value.to(device, dtype=model.dtype) if value.is_floating_point() else value.to(device)
        out[key] = value
    return out


# --- blip ---------------------------------------------------------------------


def _load_blip(model_id: str, placement: Placement) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, BlipForQuestionAnswering, BlipImageProcessorPil, BlipProcessor

    # The PIL image processor: same preprocessing whether or not torchvision is installed.
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil.from_pretrained(model_id),
        tokenizer=AutoTokenizer.from_pretrained(model_id),
    )
    model = BlipForQuestionAnswering.from_pretrained(model_id, **placement.pretrained_kwargs())
    return model, processor


@contextlib.contextmanager
def _masked_cross_attention(model: Any) -> Iterator[None]:
    """Make BLIP's cross-attention layers honour their mask while the block runs.

    transformers 5 hands a cross-attention layer its mask as ``attention_mask``
    but the layer reads ``encoder_attention_mask`` for cross-attention, so the
    mask is dropped and the answer decoder attends to the padding of shorter
    questions. The hooks pass the mask under the name the layer reads; they do
    nothing where the mask already arrives (a fixed transformers) or where
    there is none (one question alone, no padding).
    """

    def pass_mask(
        _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if kwargs.get("encoder_hidden_states") is not None and kwargs.get("encoder_attention_mask") is None:
            kwargs["encoder_attention_mask"] = kwargs.get("attention_mask")
        return args, kwargs

    handles = [
        m.register_forward_pre_hook(pass_mask, with_kwargs=True)
        for name, m in model.named_modules()
        if name.endswith("crossattention.self")
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _blip(images: Sequence[Image], questions: Sequence[str], ctx: Context) -> list[str]:
    """BLIP VQA on all pairs at once.

    This is ``BlipForQuestionAnswering.generate`` written out, with one
    difference: the answer decoder's cross-attention masks the padding of
    shorter questions (the stock method passes no mask), so an answer in a
    batch equals the answer to the same pair alone. For one question there is
    no padding and the two are the same computation.
    """
    import torch

    model, processor = load_model(ctx, _load_blip)
    device = ctx.runtime.device
    inputs = processor(
        images=[image.convert("RGB") for image in images],
        text=list(questions),
        padding=True,
        return_tensors="pt",
    )
    inputs = _to_device(inputs, model, device)
    text_config = model.config.text_config
    with torch.inference_mode(), _masked_cross_attention(model):
        image_embeds = model.vision_model(pixel_values=inputs["pixel_values"])[0]
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        question_embeds = model.text_encoder(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            return_dict=False,
        )[0]
        bos = torch.full(
            (question_embeds.shape[0], 1), model.decoder_start_token_id, dtype=torch.long, device=question_embeds.device
        )
        output = model.text_decoder.generate(
            input_ids=bos,
            eos_token_id=text_config.sep_token_id,
            pad_token_id=text_config.pad_token_id,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=inputs["attention_mask"],
            max_new_tokens=_max_new_tokens(ctx),
            do_sample=False,
            num_beams=1,
        )
    return [clean_answer(text) for text in processor.batch_decode(output, skip_special_tokens=True)]


# --- vlm ----------------------------------------------------------------------

# SmolVLM-256M-Instruct is the default: an Idefics3 model that transformers
# supports natively (no remote code), small enough for a CPU (256M parameters),
# with a chat template, and its image processor has a PIL implementation
# (Idefics3ImageProcessorPil), so it works without torchvision. SmolVLM2 and
# Qwen2.5-VL ship video processors that want torchvision, and Qwen2.5-VL-3B is
# twelve times larger.


def _load_vlm(model_id: str, placement: Placement) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_id)
    model = AutoModelForImageTextToText.from_pretrained(model_id, **placement.pretrained_kwargs())
    return model, processor


def vlm_messages(question: str) -> list[dict[str, Any]]:
    """The chat the ``vlm`` backend sends: one user turn with the image, the question and the instruction."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": f"{question.strip()} {INSTRUCTION}"},
            ],
        }
    ]


def _vlm(images: Sequence[Image], questions: Sequence[str], ctx: Context) -> list[str]:
    """A chat VLM on all pairs at once: prompts padded on the left, only the new tokens decoded."""
    import torch

    model, processor = load_model(ctx, _load_vlm)
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(f"Vqa: the processor of '{ctx.model_id}' has no chat template; the vlm backend needs one")
    tokenizer = processor.tokenizer
    prompts = [processor.apply_chat_template(vlm_messages(q), add_generation_prompt=True) for q in questions]
    # A decoder-only model continues the last token: pad on the left so every prompt ends where generation starts.
    inputs = processor(
        images=[image.convert("RGB") for image in images],
        text=prompts,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    inputs = _to_device(inputs, model, ctx.runtime.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=_max_new_tokens(ctx),
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [clean_answer(text) for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


BACKENDS: dict[str, Callable[[Sequence[Image], Sequence[str], Context], list[str]]] = {"blip": _blip, "vlm": _vlm}


def _answer(images: Sequence[Image], questions: Sequence[str], ctx: Context) -> list[str]:
    for q in questions:
        if not q.strip():
            raise ValueError("Vqa: the question is empty")
    return BACKENDS[ctx.backend](images, questions, ctx)


def vqa_batch(calls: Sequence[Mapping[str, Any]], ctx: Context) -> list[str]:
    """Answer several (image, question) pairs with one generate call."""
    return _answer([c["image"] for c in calls], [str(c["question"]) for c in calls], ctx)


@module(
    aliases=["VQA"],
    batch=vqa_batch,
    backends={"blip": "Salesforce/blip-vqa-capfilt-large", "vlm": "HuggingFaceTB/SmolVLM-256M-Instruct"},
    default_backend="blip",
    options=OPTIONS,
)
def Vqa(image: Image, question: str, ctx: Context) -> str:
    """Answer a question about an image with a short answer (a word or two, lower case).

    Yes/no questions are answered 'yes' or 'no'; counting questions with a
    number ('2'), which Eval and other modules read as a number.

    Args:
        image: the image (or a crop of it) the question is about.
        question: a natural-language question about the image, e.g. 'What color is the car?'.
    """
    return _answer([image], [question], ctx)[0]
