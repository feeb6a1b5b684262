"""The local client: a tiny random causal LM built from a config and saved to a folder, run in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from visprog.errors import ConfigError, ModelUnavailableError
from visprog.llm import TransformersClient, flatten

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

WORDS = [f"w{i:02d}" for i in range(40)]
LOCAL_MESSAGES = [
    {"role": "system", "content": "w01 w02 w03"},
    {"role": "user", "content": "w04 w05 w06 w07"},
    {"role": "assistant", "content": "w08 w09"},
    {"role": "user", "content": "w10 w11 w12 w13"},
]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _save_tiny_lm(folder: Path, chat_template: str | None = None, dtype: Any = None) -> Path:
    """A tiny random GPT-2 with a word-level tokenizer, saved to ``folder``. Generation never ends early."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = ["[UNK]", "[PAD]", "[EOS]", "system:", "user:", "assistant:", "User:", "Assistant:", *WORDS]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        initializer_range=1.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(config)
    (model if dtype is None else model.to(dtype)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def _spy_on_prompts(llm: TransformersClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    model, tokenizer = llm.load()
    prompts: list[str] = []
    generate = model.generate

    def spy(**kwargs: Any) -> Any:
        prompts.append(tokenizer.decode(kwargs["input_ids"][0]))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return prompts


def test_local_greedy_is_deterministic_and_decodes_only_new_tokens(tiny_lm: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = TransformersClient(str(tiny_lm), device="cpu", max_new_tokens=6)
    replies = llm.complete(LOCAL_MESSAGES, n=3)
    assert len(replies) == 3 and len(set(replies)) == 1
    assert llm.complete(LOCAL_MESSAGES) == replies[:1]
    # the same as generating by hand and decoding the tokens after the prompt
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    inputs = tokenizer(flatten(LOCAL_MESSAGES), return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert replies[0] == expected
    assert 0 < len(replies[0].split()) <= 6
    assert llm.load() is llm.load()  # loaded once


def test_local_sampling_returns_n_replies(tiny_lm: Path) -> None:
    torch.manual_seed(0)
    replies = TransformersClient(str(tiny_lm), device="cpu", max_new_tokens=8).complete(
        LOCAL_MESSAGES, n=4, temperature=1.5
    )
    assert len(replies) == 4 and all(isinstance(r, str) and r for r in replies)
    assert len(set(replies)) > 1


def test_local_stop_strings_cut_the_text(tiny_lm: Path) -> None:
    full = TransformersClient(str(tiny_lm), device="cpu", max_new_tokens=12).complete(LOCAL_MESSAGES)[0]
    words = full.split()
    # the first word that is new after the first one: stop there
    stop = next(w for i, w in enumerate(words) if i > 0 and w not in words[:i])
    cut = TransformersClient(str(tiny_lm), device="cpu", max_new_tokens=12, stop=[stop, "never-seen"])
    assert cut.complete(LOCAL_MESSAGES) == [full[: full.index(stop)]]
    assert stop not in cut.complete(LOCAL_MESSAGES)[0]


def test_local_prompt_is_flattened_without_a_chat_template(tiny_lm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = TransformersClient(str(tiny_lm), device="cpu", max_new_tokens=2)
    prompts = _spy_on_prompts(llm, monkeypatch)
    llm.complete(LOCAL_MESSAGES)
    assert prompts == [" ".join(flatten(LOCAL_MESSAGES).split())]


def test_local_prompt_uses_the_chat_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _save_tiny_lm(tmp_path / "templated", chat_template=TEMPLATE)
    llm = TransformersClient(str(folder), device="cpu", max_new_tokens=2)
    prompts = _spy_on_prompts(llm, monkeypatch)
    llm.complete(LOCAL_MESSAGES)
    assert prompts == ["system: w01 w02 w03 user: w04 w05 w06 w07 assistant: w08 w09 user: w10 w11 w12 w13 assistant:"]


def test_a_missing_local_folder_is_model_unavailable(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelUnavailableError, match="folder does not exist") as err:
        TransformersClient(missing).complete(LOCAL_MESSAGES)
    assert err.value.model_id == missing and missing in str(err.value)


def test_an_empty_local_folder_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="no usable model files") as err:
        TransformersClient(str(tmp_path)).complete(LOCAL_MESSAGES)
    assert str(tmp_path) in str(err.value)


def test_an_uncached_hub_model_offline_is_model_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE=1") as err:
        TransformersClient("visprog-tests/no-such-llm").complete(LOCAL_MESSAGES)
    assert "visprog-tests/no-such-llm" in str(err.value) and "hf download visprog-tests/no-such-llm" in str(err.value)


# --- precision and device -------------------------------------------------------------


def test_the_weights_load_in_the_asked_precision_directly(tiny_lm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dtype="bfloat16"`` reaches from_pretrained, so the weights never exist in float32; no cast follows."""
    from transformers import AutoModelForCausalLM

    asked: list[dict[str, Any]] = []
    from_pretrained = AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs)
        return from_pretrained(*args, **kwargs)

    casts: list[tuple[Any, ...]] = []
    to = torch.nn.Module.to

    def no_cast(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dtype") is not None or any(isinstance(a, torch.dtype) for a in args):
            casts.append(args)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setattr(torch.nn.Module, "to", no_cast)
    llm = TransformersClient(str(tiny_lm), device="cpu", dtype="bfloat16", max_new_tokens=3)
    model, _ = llm.load()
    assert [kwargs.get("dtype") for kwargs in asked] == [torch.bfloat16]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and casts == []
    assert not model.training and model.device.type == "cpu"
    assert len(llm.complete(LOCAL_MESSAGES)[0].split()) <= 3


def test_the_default_precision_is_the_checkpoints_own(tmp_path: Path) -> None:
    folder = _save_tiny_lm(tmp_path / "half", dtype=torch.float16)
    model, _ = TransformersClient(str(folder), device="cpu").load()
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    model, _ = TransformersClient(str(folder), device="cpu", dtype="float32").load()
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_an_unknown_precision_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dtype must be one of auto, float32, bfloat16, float16, got 'half'"):
        TransformersClient("org/model", dtype="half")


def test_the_token_mask_fits_a_model_wider_than_its_tokenizer() -> None:
    """Models often have more output rows than tokens (padded vocabularies): the mask covers them all."""
    import torch

    from tests.visprog.planner.test_constraint import INPUTS, _byte_tokenizer, _registry
    from visprog.llm.constrained import GrammarLogits
    from visprog.planner.constraint import ProgramConstraint

    tokenizer = _byte_tokenizer()
    for extra in (0, 7, 40):
        logits = GrammarLogits(ProgramConstraint(_registry(), INPUTS), tokenizer, 0, tokenizer.eos_token_id)
        scores = torch.zeros((1, len(tokenizer) + extra))
        masked = logits(torch.zeros((1, 0), dtype=torch.long), scores)
        allowed = torch.isfinite(masked[0]).nonzero().flatten().tolist()
        assert allowed and all(tokenizer.decode([t])[:1].isupper() for t in allowed)  # a target name starts a line
        assert not torch.isfinite(masked[0, len(tokenizer) :]).any()


@pytest.mark.parametrize("seed", range(4))
def test_a_model_that_never_closes_still_ends_within_its_token_limit(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that would go on inside a line for ever (here: random preferences that never choose a quote, a
    parenthesis or a line end) is made to close the line when it grows long or the limit nears: the output is a
    whole program that checks, within the limit."""
    import torch

    from tests.visprog.planner.test_constraint import INPUTS, _byte_tokenizer, _registry
    from visprog.language.checker import check
    from visprog.llm.constrained import CLOSERS, GrammarLogits
    from visprog.planner.constraint import ProgramConstraint

    tokenizer = _byte_tokenizer()
    registry = _registry()
    limit = 400
    # This tokenizer spells out every character: a name of 31 characters is 31 tokens, so a line with nothing to
    # close early (Tag(image=..., object=NAME)) and the result line after it take up to 130 tokens; the reserve
    # must hold them (a real tokenizer writes them in a tenth of that: FINISH_TOKENS is 48).
    monkeypatch.setattr("visprog.llm.constrained.FINISH_TOKENS", 140)
    logits = GrammarLogits(ProgramConstraint(registry, INPUTS), tokenizer, 0, tokenizer.eos_token_id, limit)
    generator = torch.Generator().manual_seed(seed)
    preference = torch.rand(len(tokenizer), generator=generator)
    for token in range(len(tokenizer)):
        if set(tokenizer.decode([token])) & CLOSERS:
            preference[token] = -1.0  # the last thing this model would write
    ids = torch.zeros((1, 0), dtype=torch.long)
    for _ in range(limit):
        choice = int(logits(ids, preference.clone().unsqueeze(0)).argmax())
        if choice == tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[choice]])], dim=1)
    else:
        logits(ids, preference.clone().unsqueeze(0))  # the last token is consumed at the next step
    assert not logits.truncated(0), tokenizer.decode(ids[0])
    text = tokenizer.decode(ids[0])
    checked = check(text, INPUTS, registry=registry, known_inputs=INPUTS)
    assert checked.steps[checked.result].step.is_result
