"""groundingdino-py 0.4.0 on transformers 5: its BERT wrapper, rewritten for the BERT of transformers 5.

groundingdino-py wraps transformers' ``BertModel`` in its own ``BertModelWarper``
(``groundingdino/models/GroundingDINO/bertwarper.py``), which copies the forward
pass of transformers 4's BertModel so that it can hand BERT a 3-D attention
mask: each token attends only to the tokens of its own phrase of the caption
("cat . red car ."), with position ids that restart at every phrase. Two calls
in that copy are gone in transformers 5: ``BertModel.get_extended_attention_mask``
(the wrapper fails as soon as it is built) and the embeddings'
``past_key_values_length`` argument.

:class:`BertModelWrapper` is the same wrapper for transformers 5: the same
submodules under the same names (so checkpoints load unchanged), and the same
computation, the 3-D (or 2-D) mask turned into the additive 4-D mask the old
``get_extended_attention_mask`` made, which transformers 5's BERT layers take
as it is. :func:`install` puts it in place of ``BertModelWarper`` where
groundingdino's model module builds it; nothing else of groundingdino, and
nothing of transformers, is changed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["BertModelWrapper", "extended_attention_mask", "install"]


def extended_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 2-D (batch, keys) or 3-D (batch, queries, keys) mask of 1 = attend as the additive
    (batch, 1, queries or 1, keys) mask that BERT's attention adds to its scores: 0 where a token
    may attend, the dtype's lowest value where it may not."""
    if mask.dim() == 3:
        expanded = mask[:, None, :, :]
    elif mask.dim() == 2:
        expanded = mask[:, None, None, :]
    else:
        raise ValueError(f"an attention mask has 2 or 3 dimensions, got shape {tuple(mask.shape)}")
    return (1.0 - expanded.to(dtype)) * torch.finfo(dtype).min


class BertModelWrapper(nn.Module):
    """groundingdino's ``BertModelWarper`` for transformers 5: BERT with a per-phrase attention mask.

    Built from a transformers ``BertModel``; keeps its ``embeddings``, ``encoder``
    and ``pooler`` (the names groundingdino's checkpoints use). ``forward`` takes
    what groundingdino passes (``input_ids``, ``attention_mask`` of 2 or 3
    dimensions, ``token_type_ids``, ``position_ids``) and returns the output with
    ``last_hidden_state`` and ``pooler_output`` that groundingdino reads.
    """

    def __init__(self, bert_model: Any) -> None:
        super().__init__()
        self.config = bert_model.config
        self.embeddings = bert_model.embeddings
        self.encoder = bert_model.encoder
        self.pooler = bert_model.pooler

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **unused: Any,
    ) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("BertModelWrapper takes exactly one of input_ids and inputs_embeds")
        hidden = self.embeddings(
            input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        mask = extended_attention_mask(attention_mask.to(hidden.device), hidden.dtype)
        sequence = self.encoder(hidden, attention_mask=mask).last_hidden_state
        pooled = self.pooler(sequence) if self.pooler is not None else None
        return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=sequence, pooler_output=pooled)


def install() -> None:
    """Make groundingdino build :class:`BertModelWrapper` in place of its ``BertModelWarper`` (idempotent).

    Only the name that groundingdino's model module (``groundingdino.models.GroundingDINO.groundingdino``)
    calls is rebound; ``bertwarper.BertModelWarper`` itself and transformers stay as they are.
    """
    from groundingdino.models.GroundingDINO import groundingdino as model_module

    model_module.BertModelWarper = BertModelWrapper
