"""BERT (MiniLM is a BERT): ``attention.self.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense`` and ``output.dense`` in every ``encoder.layer``.

RoBERTa and ELECTRA name their modules alike and subclass this family.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.arch.base import Family, LayerLayout


class BertFamily(Family):
    """BERT and BERT-shaped models (MiniLM), with any task head."""

    name = "bert"
    model_types: tuple[str, ...] = ("bert",)
    layout = LayerLayout(
        query=("attention.self.query",),
        key_value=("attention.self.key", "attention.self.value"),
        attention_out="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        attention_block="attention.self",
    )

    def layers(self, model: PreTrainedModel) -> list[nn.Module]:
        return list(cast(Any, model.base_model).encoder.layer)

    def head_dim(self, model: PreTrainedModel) -> int:
        config = model.config
        return config.hidden_size // config.num_attention_heads
