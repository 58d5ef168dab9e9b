"""BERT (MiniLM is a BERT): ``attention.self.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense`` and ``output.dense`` in every ``encoder.layer``.

RoBERTa and ELECTRA name their modules alike and subclass this family.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.arch.base import Family
from autoprune.engine.groups import LayerGroups, columns, rows


class BertFamily(Family):
    """BERT and BERT-shaped models (MiniLM), with any task head."""

    name = "bert"
    model_types: tuple[str, ...] = ("bert",)

    def layer_list(self, model: PreTrainedModel) -> nn.ModuleList:
        return cast(nn.ModuleList, cast(Any, model.base_model).encoder.layer)

    def head_dim(self, model: PreTrainedModel) -> int:
        config = model.config
        return config.hidden_size // config.num_attention_heads

    def groups(self, model: PreTrainedModel) -> LayerGroups:
        d = self.head_dim(model)
        return LayerGroups(
            head=(rows("attention.self.query", d), columns("attention.output.dense", d)),
            kv=(rows("attention.self.key", d), rows("attention.self.value", d)),
            neuron=(rows("intermediate.dense"), columns("output.dense")),
            attention_block="attention.self",
        )

    def sync_attention(self, layer: nn.Module, heads: int, kv_heads: int) -> None:
        attention = cast(Any, layer).attention.self
        attention.num_attention_heads = heads
        attention.all_head_size = heads * attention.attention_head_size
