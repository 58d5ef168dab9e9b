"""DistilBERT: one attention module holding ``q_lin, k_lin, v_lin, out_lin``, and ``ffn.lin1/2``."""

from __future__ import annotations

from typing import Any, cast

from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.arch.base import Family, LayerLayout


class DistilBertFamily(Family):
    """DistilBERT (and its sequence-classification head)."""

    name = "distilbert"
    model_types = ("distilbert",)
    layout = LayerLayout(
        query=("attention.q_lin",),
        key_value=("attention.k_lin", "attention.v_lin"),
        attention_out="attention.out_lin",
        ffn_in=("ffn.lin1",),
        ffn_out="ffn.lin2",
        attention_block="attention",
    )

    def layers(self, model: PreTrainedModel) -> list[nn.Module]:
        return list(cast(Any, model.base_model).transformer.layer)

    def head_dim(self, model: PreTrainedModel) -> int:
        config = model.config
        return config.dim // config.n_heads
