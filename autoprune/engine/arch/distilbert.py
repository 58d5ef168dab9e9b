"""DistilBERT: one attention module holding ``q_lin, k_lin, v_lin, out_lin``, and ``ffn.lin1/2``."""

from __future__ import annotations

from typing import Any, cast

from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.arch.base import Family
from autoprune.engine.groups import LayerGroups, columns, rows


class DistilBertFamily(Family):
    """DistilBERT (and its sequence-classification head)."""

    name = "distilbert"
    model_types = ("distilbert",)

    def layer_list(self, model: PreTrainedModel) -> nn.ModuleList:
        return cast(nn.ModuleList, cast(Any, model.base_model).transformer.layer)

    def head_dim(self, model: PreTrainedModel) -> int:
        config = model.config
        return config.dim // config.n_heads

    def groups(self, model: PreTrainedModel) -> LayerGroups:
        d = self.head_dim(model)
        return LayerGroups(
            head=(rows("attention.q_lin", d), columns("attention.out_lin", d)),
            kv=(rows("attention.k_lin", d), rows("attention.v_lin", d)),
            neuron=(rows("ffn.lin1"), columns("ffn.lin2")),
            attention_block="attention",
        )

    def sync_attention(self, layer: nn.Module, heads: int, kv_heads: int) -> None:
        cast(Any, layer).attention.n_heads = heads
