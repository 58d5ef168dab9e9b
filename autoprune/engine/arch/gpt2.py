"""GPT-2: ``attn.c_attn`` (query, key and value rows fused), ``attn.c_proj``, ``mlp.c_fc`` and
``mlp.c_proj`` in every ``transformer.h``, all ``Conv1D`` layers (weights stored ``(in, out)``).

A head is its rows in the query block of ``c_attn`` and its columns of ``c_proj``; its
key/value group (no grouped-query attention) its rows in the key and value blocks. A neuron
is one row of ``c_fc`` and one column of ``mlp.c_proj``.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.arch.base import Family
from autoprune.engine.groups import LayerGroups, columns, rows


class GPT2Family(Family):
    """GPT-2 and GPT-2-shaped decoders, with any task head."""

    name = "gpt2"
    model_types = ("gpt2",)

    def layer_list(self, model: PreTrainedModel) -> nn.ModuleList:
        return cast(nn.ModuleList, cast(Any, model.base_model).h)

    def head_dim(self, model: PreTrainedModel) -> int:
        config = model.config
        return config.hidden_size // config.num_attention_heads

    def groups(self, model: PreTrainedModel) -> LayerGroups:
        d = self.head_dim(model)
        return LayerGroups(
            head=(rows("attn.c_attn", d, part=0, parts=3), columns("attn.c_proj", d)),
            kv=(rows("attn.c_attn", d, part=1, parts=3), rows("attn.c_attn", d, part=2, parts=3)),
            neuron=(rows("mlp.c_fc"), columns("mlp.c_proj")),
            attention_block="attn",
        )

    def sync_attention(self, layer: nn.Module, heads: int, kv_heads: int) -> None:
        """``GPT2Attention`` splits ``c_attn``'s output into blocks of ``split_size`` and reshapes
        them by ``head_dim``; both follow the kept heads (``head_dim`` itself is unchanged)."""
        attention = cast(Any, layer).attn
        attention.num_heads = heads
        attention.split_size = heads * attention.head_dim
