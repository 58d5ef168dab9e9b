"""The protocol every model family implements, and the slicing it shares.

A family names the modules of one transformer layer (which linear layers are grouped by
attention head, which by feed-forward neuron) and where the layers are. Everything else,
describing, slicing, rebuilding from recorded shapes, is generic and lives here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.sparsity import MaskedLinear, empty_linear


@dataclass(frozen=True)
class Architecture:
    """What a (possibly pruned) model is made of, layer by layer.

    Attributes:
        family: The model family's name (``"bert"``, ``"distilbert"``, ...).
        num_layers: Number of transformer layers.
        hidden_size: Width of the residual stream.
        head_dim: Size of one attention head.
        heads: Query heads per layer.
        kv_heads: Key/value heads per layer (equal to ``heads`` without grouped-query attention).
        ffn: Feed-forward neurons per layer.
        total_params: Every parameter of the model.
        prunable_params: Parameters of the prunable linear layers (attention and feed-forward).
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


@dataclass(frozen=True)
class LayerLayout:
    """Module paths inside one transformer layer, relative to the layer.

    Attributes:
        query: Linear layers whose output rows are grouped by query head.
        key_value: Linear layers whose output rows are grouped by key/value head.
        attention_out: The linear layer whose input columns are grouped by query head.
        ffn_in: Linear layers whose output rows are the feed-forward neurons.
        ffn_out: The linear layer whose input columns are the feed-forward neurons.
        attention_block: The module replaced by :class:`ZeroHeadAttention` when a layer keeps
            no head. If ``attention_out`` lies inside it, it is kept inside the replacement.
    """

    query: tuple[str, ...]
    key_value: tuple[str, ...]
    attention_out: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    attention_block: str


class ZeroHeadAttention(nn.Module):
    """Stands in for an attention block that keeps no head.

    It returns what the block returns, ``(output, None)``, where ``output`` is the output
    projection of an empty input (its bias) or, without a projection inside the block, an
    empty ``(batch, seq, 0)`` tensor, so the layer keeps only its residual path.
    """

    def __init__(self, projections: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.projection_name: str | None = None
        for name, linear in (projections or {}).items():
            self.add_module(name, linear)
            self.projection_name = name

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> tuple:
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)  # (batch, seq, 0)
        if self.projection_name is None:
            return empty, None
        projection = self.get_submodule(self.projection_name)
        return projection(empty), None  # (batch, seq, hidden)


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new linear layer keeping the given output rows (``dim=0``) or input columns (``dim=1``).

    The bias follows the rows; a :class:`MaskedLinear` keeps its mask sliced the same way.
    """
    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index)
    bias = linear.bias.detach() if linear.bias is not None else None
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index)
    out_features, in_features = weight.shape
    layer_class = MaskedLinear if isinstance(linear, MaskedLinear) else nn.Linear
    new = empty_linear(layer_class, linear, in_features, out_features)
    if isinstance(linear, MaskedLinear) and isinstance(new, MaskedLinear):
        new.mask.copy_(linear.mask.index_select(dim, index))
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Row indices of the given heads in a projection of width ``heads * head_dim``."""
    offsets = torch.arange(head_dim, device=heads.device)
    return (heads[:, None] * head_dim + offsets[None, :]).reshape(-1)  # (len(heads) * head_dim,)


def find_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """The module at dotted ``path`` below ``root``, or None where it was pruned away."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


class Family(ABC):
    """One model family: where its layers are and how one layer is laid out.

    Subclasses set ``name``, ``model_types`` and ``layout`` and implement :meth:`layers` and
    :meth:`head_dim`. Slicing, describing and rebuilding are shared.
    """

    name: str
    model_types: tuple[str, ...]
    layout: LayerLayout

    @abstractmethod
    def layers(self, model: PreTrainedModel) -> list[nn.Module]:
        """The transformer layers, first to last."""

    @abstractmethod
    def head_dim(self, model: PreTrainedModel) -> int:
        """The size of one attention head, from the model's config."""

    # -- reading ---------------------------------------------------------------------------

    def prunable_linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """The layer's prunable linear layers that still exist, by path relative to the layer."""
        lay = self.layout
        paths = (*lay.query, *lay.key_value, lay.attention_out, *lay.ffn_in, lay.ffn_out)
        found = {path: find_submodule(layer, path) for path in paths}
        return {path: module for path, module in found.items() if isinstance(module, nn.Linear)}

    def attention_out(self, layer: nn.Module) -> nn.Linear:
        """The attention output projection (its input is grouped by query head)."""
        return layer.get_submodule(self.layout.attention_out)  # type: ignore[return-value]

    def ffn_out(self, layer: nn.Module) -> nn.Linear:
        """The second feed-forward projection (its input is the feed-forward neurons)."""
        return layer.get_submodule(self.layout.ffn_out)  # type: ignore[return-value]

    def describe(self, model: PreTrainedModel) -> Architecture:
        """Read the architecture off the modules' shapes (so pruned models are described too)."""
        head_dim = self.head_dim(model)
        layers = self.layers(model)
        heads, kv_heads, ffn = [], [], []
        prunable = 0
        for layer in layers:
            heads.append(self.attention_out(layer).in_features // head_dim)
            kv = find_submodule(layer, self.layout.key_value[0])
            kv_heads.append(kv.out_features // head_dim if isinstance(kv, nn.Linear) else 0)
            ffn.append(self.ffn_out(layer).in_features)
            prunable += sum(
                p.numel() for lin in self.prunable_linears(layer).values() for p in lin.parameters()
            )
        return Architecture(
            family=self.name,
            num_layers=len(layers),
            hidden_size=self.attention_out(layers[0]).out_features,
            head_dim=head_dim,
            heads=tuple(heads),
            kv_heads=tuple(kv_heads),
            ffn=tuple(ffn),
            total_params=sum(p.numel() for p in model.parameters()),
            prunable_params=prunable,
        )

    # -- slicing ---------------------------------------------------------------------------

    def slicing_plan(
        self, keep_heads: torch.Tensor, keep_neurons: torch.Tensor, head_dim: int
    ) -> dict[str, tuple[int, torch.Tensor]]:
        """For each prunable linear path: the dimension to slice and the indices to keep.

        Without grouped-query attention the key/value heads are the query heads.
        """
        rows = head_rows(keep_heads, head_dim)
        lay = self.layout
        plan: dict[str, tuple[int, torch.Tensor]] = {}
        for path in (*lay.query, *lay.key_value):
            plan[path] = (0, rows)
        plan[lay.attention_out] = (1, rows)
        for path in lay.ffn_in:
            plan[path] = (0, keep_neurons)
        plan[lay.ffn_out] = (1, keep_neurons)
        return plan

    def slice_layer(
        self, layer: nn.Module, keep_heads: torch.Tensor, keep_neurons: torch.Tensor, head_dim: int
    ) -> dict[str, tuple[int, torch.Tensor]]:
        """Physically keep only the given heads and neurons of ``layer`` (in place); returns
        the :meth:`slicing_plan` it followed.

        A layer left with no head has its attention block replaced by
        :class:`ZeroHeadAttention`; one left with no neuron keeps empty feed-forward layers,
        whose output is the second projection's bias.
        """
        plan = self.slicing_plan(keep_heads, keep_neurons, head_dim)
        for path, linear in self.prunable_linears(layer).items():
            dim, index = plan[path]
            layer.set_submodule(path, slice_linear(linear, index, dim))
        if len(keep_heads) == 0:
            self._drop_attention(layer)
        return plan

    def _drop_attention(self, layer: nn.Module) -> None:
        block = self.layout.attention_block
        if isinstance(layer.get_submodule(block), ZeroHeadAttention):
            return
        inner = self.layout.attention_out
        kept = {}
        if inner.startswith(block + "."):
            kept[inner[len(block) + 1 :]] = layer.get_submodule(inner)
        layer.set_submodule(block, ZeroHeadAttention(kept))

    def reshape(self, model: PreTrainedModel, heads: Sequence[int], ffn: Sequence[int]) -> None:
        """Give a freshly built model the recorded per-layer shapes (weights to be loaded after)."""
        head_dim = self.head_dim(model)
        for layer, n_heads, n_ffn in zip(self.layers(model), heads, ffn, strict=True):
            self.slice_layer(layer, torch.arange(n_heads), torch.arange(n_ffn), head_dim)
