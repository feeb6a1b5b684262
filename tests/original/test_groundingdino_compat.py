"""The transformers-5 BERT wrapper for groundingdino-py (modules/groundingdino_compat.py).

groundingdino's own wrapper cannot run on transformers 5 (it is checked here
that it still fails, so the adaptation is still needed). What it computes is
BERT with a per-phrase attention mask: every token of a caption attends only to
the tokens of its own phrase, with positions that restart at every phrase, and
[CLS], [SEP] and padding attend to themselves only. So the wrapper's output for
each phrase must equal BERT run on that phrase alone, which transformers'
``BertModel`` computes directly. With a plain 2-D padding mask, the wrapper
must equal ``BertModel`` on the same inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from groundingdino.models.GroundingDINO import bertwarper
from groundingdino.models.GroundingDINO import groundingdino as model_module
from visprog.modules.groundingdino_compat import BertModelWrapper, install

CAPTIONS = ["cat . red car .", "dog ."]  # two phrases, then one: the second caption is padded


@pytest.fixture(scope="module")
def bert(bert_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, BertModel

    return BertModel.from_pretrained(bert_dir).eval(), AutoTokenizer.from_pretrained(bert_dir)


def groundingdino_inputs(tokenizer: Any) -> tuple[dict[str, Any], Any]:
    """What groundingdino's forward hands its BERT wrapper for :data:`CAPTIONS`, made by the package's own
    function; and the tokenized captions."""
    tokenized = tokenizer(CAPTIONS, padding="longest", return_tensors="pt")
    special = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"])
    masks, positions, _ = bertwarper.generate_masks_with_special_tokens_and_transfer_map(tokenized, special, tokenizer)
    inputs = {k: v for k, v in tokenized.items() if k != "attention_mask"}
    inputs["attention_mask"], inputs["position_ids"] = masks, positions
    return inputs, tokenized


def blocks(mask: torch.Tensor) -> list[list[int]]:
    """The groups of token positions that attend to each other (the rows of the block-diagonal mask)."""
    out: list[list[int]] = []
    for i in range(mask.shape[0]):
        row = mask[i].nonzero().flatten().tolist()
        if row not in out:
            out.append(row)
    return out


def test_the_packages_own_wrapper_does_not_run_on_transformers_5(bert: tuple[Any, Any]) -> None:
    model, _ = bert
    assert not hasattr(model, "get_extended_attention_mask")
    with pytest.raises(AttributeError, match="get_extended_attention_mask"):
        bertwarper.BertModelWarper(bert_model=model)


def test_each_phrase_is_encoded_as_bert_encodes_it_alone(bert: tuple[Any, Any]) -> None:
    model, tokenizer = bert
    inputs, tokenized = groundingdino_inputs(tokenizer)
    with torch.no_grad():
        out = BertModelWrapper(model)(**inputs)
    assert out.last_hidden_state.shape == (*tokenized["input_ids"].shape, model.config.hidden_size)
    checked = 0
    for b in range(len(CAPTIONS)):
        groups = blocks(inputs["attention_mask"][b])
        assert [len(g) for g in groups if len(g) > 1] == ([2, 3] if b == 0 else [2])  # "cat .", "red car ."; "dog ."
        for group in groups:
            ids = inputs["input_ids"][b, group][None]
            with torch.no_grad():
                alone = model(
                    input_ids=ids,
                    token_type_ids=inputs["token_type_ids"][b, group][None],
                    position_ids=inputs["position_ids"][b, group][None],
                )
            torch.testing.assert_close(
                out.last_hidden_state[b, group], alone.last_hidden_state[0], atol=1e-5, rtol=1e-4
            )
            if group == [0]:  # [CLS] alone: the pooled output is BERT's pooler on it
                torch.testing.assert_close(out.pooler_output[b], alone.pooler_output[0], atol=1e-5, rtol=1e-4)
            checked += 1
    assert checked >= 8


def test_a_padding_mask_gives_berts_own_output(bert: tuple[Any, Any]) -> None:
    model, tokenizer = bert
    tokenized = tokenizer(CAPTIONS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        ours = BertModelWrapper(model)(**tokenized)
        theirs = model(**tokenized)
    keep = tokenized["attention_mask"].bool()
    torch.testing.assert_close(ours.last_hidden_state[keep], theirs.last_hidden_state[keep], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, atol=1e-5, rtol=1e-4)


def test_install_rebinds_only_the_name_groundingdino_builds(dino_folder: Path, bert: tuple[Any, Any]) -> None:
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    original = bertwarper.BertModelWarper
    install()
    install()  # idempotent
    assert model_module.BertModelWarper is BertModelWrapper
    assert bertwarper.BertModelWarper is original  # the package's class itself is untouched
    assert not hasattr(transformers.BertModel, "get_extended_attention_mask")  # transformers is untouched
    args = SLConfig.fromfile(str(dino_folder / "tiny_dino_cfg.py"))
    args.device = "cpu"
    built = build_model(args)
    assert isinstance(built.bert, BertModelWrapper)
    # the checkpoint names of the package's wrapper: bert.embeddings..., bert.encoder..., bert.pooler...
    model, _ = bert
    expected = {f"bert.{k}" for k in model.state_dict()}
    assert {k for k in built.state_dict() if k.startswith("bert.")} == expected
