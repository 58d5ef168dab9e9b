"""Llama-style decoders: ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj`` in every
``model.layers``, with grouped-query attention.

Query head ``i`` reads key/value head ``i // (heads / kv_heads)``; a neuron is one row of the
gate and up projections and one column of the down projection.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.arch.base import Family
from autoprune.engine.groups import LayerGroups, columns, rows


class LlamaFamily(Family):
    """Llama and Llama-shaped decoders (SmolLM2), with any task head."""

    name = "llama"
    model_types = ("llama",)

    def layer_list(self, model: PreTrainedModel) -> nn.ModuleList:
        return cast(nn.ModuleList, cast(Any, model.base_model).layers)

    def head_dim(self, model: PreTrainedModel) -> int:
        config = model.config
        head_dim = getattr(config, "head_dim", None)
        return int(head_dim or config.hidden_size // config.num_attention_heads)

    def groups(self, model: PreTrainedModel) -> LayerGroups:
        d = self.head_dim(model)
        return LayerGroups(
            head=(rows("self_attn.q_proj", d), columns("self_attn.o_proj", d)),
            kv=(rows("self_attn.k_proj", d), rows("self_attn.v_proj", d)),
            neuron=(rows("mlp.gate_proj"), rows("mlp.up_proj"), columns("mlp.down_proj")),
            attention_block="self_attn",
        )

    def sync_attention(self, layer: nn.Module, heads: int, kv_heads: int) -> None:
        """``LlamaAttention`` repeats each key/value head ``num_key_value_groups`` times (its
        config's ratio, dense); set it to the layer's own ratio."""
        cast(Any, layer).self_attn.num_key_value_groups = heads // kv_heads
