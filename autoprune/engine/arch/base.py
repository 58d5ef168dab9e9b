"""The protocol every model family implements, and what it shares.

A family says where a model's transformer layers are, how wide a head is, and which rows and
columns of which linear layers make its prunable units (:class:`LayerGroups`, declared once).
Describing, slicing, dropping whole layers and rebuilding from recorded shapes read those
groups and are shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.groups import Dim, LayerGroups, Unit, slice_layer
from autoprune.engine.projections import matrix_shape

LAYERS_RECORD = "autoprune_layers"
"""The config attribute that records, once layers were dropped, which layers of the original
model a model keeps: one flag per original layer (absent while every layer is kept)."""


@dataclass(frozen=True)
class Architecture:
    """What a (possibly pruned) model is made of, layer by layer.

    Attributes:
        family: The model family's name (``"bert"``, ``"llama"``, ...).
        num_layers: Number of transformer layers.
        hidden_size: Width of the residual stream.
        head_dim: Size of one attention head.
        heads: Query heads per layer.
        kv_heads: Key/value heads per layer (equal to ``heads`` without grouped-query
            attention). Each layer's query heads split evenly over its key/value heads.
        ffn: MLP (feed-forward) neurons per layer.
        total_params: Every parameter of the model.
        prunable_params: Parameters of the prunable linear layers (attention and MLP).
    """

    family: str
    num_layers: int
    hidden_size: int
    head_dim: int
    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    ffn: tuple[int, ...]
    total_params: int
    prunable_params: int

    def group_size(self, layer: int) -> int:
        """Query heads per key/value group in ``layer`` (1 without grouped-query attention;
        0 in a layer that keeps no head)."""
        kv = self.kv_heads[layer]
        return self.heads[layer] // kv if kv else 0


class Family(ABC):
    """One model family: where its layers are and what its prunable groups are.

    Subclasses set ``name`` and ``model_types`` and implement :meth:`layer_list`,
    :meth:`head_dim`, :meth:`groups` and :meth:`sync_attention`.
    """

    name: str
    model_types: tuple[str, ...]

    @abstractmethod
    def layer_list(self, model: PreTrainedModel) -> nn.ModuleList:
        """The module list holding the transformer layers."""

    def layers(self, model: PreTrainedModel) -> list[nn.Module]:
        """The transformer layers, first to last."""
        return list(self.layer_list(model))

    @abstractmethod
    def head_dim(self, model: PreTrainedModel) -> int:
        """The size of one attention head, from the model's config."""

    @abstractmethod
    def groups(self, model: PreTrainedModel) -> LayerGroups:
        """The prunable groups of every transformer layer of ``model``."""

    @abstractmethod
    def sync_attention(self, layer: nn.Module, heads: int, kv_heads: int) -> None:
        """Bring the attention module's own head counts in line with its sliced projections.

        Called after every slicing of a layer that keeps ``heads > 0`` query heads and
        ``kv_heads`` key/value heads.
        """

    def describe(self, model: PreTrainedModel) -> Architecture:
        """Read the architecture off the modules' shapes (so pruned models are described too)."""
        groups = self.groups(model)
        layers = self.layers(model)
        heads = tuple(groups.count(layer, "head") for layer in layers)
        kv_heads = tuple(groups.count(layer, "kv") for layer in layers)
        ffn = tuple(groups.count(layer, "neuron") for layer in layers)
        prunable = sum(
            p.numel()
            for layer in layers
            for linear in groups.linears(layer).values()
            for p in linear.parameters()
        )
        attention_out = groups.linears(layers[0])[groups.gate("head").path]
        return Architecture(
            family=self.name,
            num_layers=len(layers),
            hidden_size=matrix_shape(attention_out)[0],
            head_dim=self.head_dim(model),
            heads=heads,
            kv_heads=kv_heads,
            ffn=ffn,
            total_params=sum(p.numel() for p in model.parameters()),
            prunable_params=prunable,
        )

    def slice_layer(
        self,
        layer: nn.Module,
        groups: LayerGroups,
        keep_heads: torch.Tensor,
        keep_kv: torch.Tensor,
        keep_neurons: torch.Tensor,
    ) -> dict[str, tuple[Dim, torch.Tensor]]:
        """Physically keep only the given query heads, key/value groups and neurons of
        ``layer`` (in place; see :func:`autoprune.engine.groups.slice_layer`); returns the plan
        followed, the dimension and kept indices for each prunable linear path.

        ``keep_heads`` must hold the same number of query heads from every group in
        ``keep_kv``, so the sliced layer computes grouped-query attention over the kept groups.
        """
        keep: dict[Unit, torch.Tensor] = {"head": keep_heads, "kv": keep_kv, "neuron": keep_neurons}
        plan = slice_layer(layer, groups, keep)
        if len(keep_heads) > 0:
            self.sync_attention(layer, len(keep_heads), len(keep_kv))
        return plan

    def reshape(
        self,
        model: PreTrainedModel,
        heads: Sequence[int],
        kv_heads: Sequence[int],
        ffn: Sequence[int],
    ) -> None:
        """Give a freshly built model the recorded per-layer shapes (weights to be loaded after)."""
        groups = self.groups(model)
        shapes = zip(self.layers(model), heads, kv_heads, ffn, strict=True)
        for layer, n_heads, n_kv, n_ffn in shapes:
            self.slice_layer(
                layer, groups, torch.arange(n_heads), torch.arange(n_kv), torch.arange(n_ffn)
            )

    def drop_layers(self, model: PreTrainedModel, keep: Sequence[bool]) -> None:
        """Take the layers whose ``keep`` flag is False out of ``model`` (in place).

        The kept layers are renumbered in order (every ``layer_idx`` in them, which a
        decoder's key/value cache is indexed by), the config's ``num_hidden_layers`` becomes
        their number, and :data:`LAYERS_RECORD` in the config says which layers of the original
        model remain (layers dropped before included).

        Raises:
            ValueError: If ``keep`` has not one flag per layer, or keeps no layer.
        """
        container = self.layer_list(model)
        if len(keep) != len(container) or not any(keep):
            raise ValueError(
                f"keep must have one flag per layer ({len(container)}) and keep at least one; "
                f"got {list(keep)}"
            )
        for index in reversed(range(len(container))):
            if not keep[index]:
                del container[index]
        for index, layer in enumerate(container):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    cast(Any, module).layer_idx = index
        config = model.config
        original = getattr(config, LAYERS_RECORD, None) or [True] * len(keep)
        flags = iter(keep)
        setattr(config, LAYERS_RECORD, [kept and next(flags) for kept in original])
        config.num_hidden_layers = len(container)
