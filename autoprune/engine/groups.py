"""Prunable groups: which rows and columns of which linear layers make one prunable unit.

A model family declares, once, a :class:`LayerGroups` for its transformer layers. It names
three kinds of unit:

- a query **head**: its ``head_dim`` rows of the query projection and its ``head_dim``
  columns of the attention output projection;
- a **key/value group**: its ``head_dim`` rows of the key and value projections. Under
  grouped-query attention one key/value head is read by ``heads / kv_heads`` consecutive query
  heads; without it, a key/value group belongs to one query head;
- an MLP **neuron**: its row of every input projection (the gate projection included, where
  there is one) and its column of the output projection.

This module is the one place that layout is interpreted. Slicing (:func:`slice_layer`),
magnitude scores (:meth:`Slice.squared_norms`), gates (:meth:`LayerGroups.gate`), the
prunable linear layers that masks cover (:meth:`LayerGroups.linears`) and the size model's
per-unit costs (:meth:`Slice.cost`) all read it and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from autoprune.engine.sparsity import MaskedLinear, empty_linear

Unit = Literal["head", "kv", "neuron"]
UNITS: tuple[Unit, ...] = ("head", "kv", "neuron")
Dim = Literal[0, 1]


@dataclass(frozen=True)
class Slice:
    """One linear layer's share of a unit: ``width`` consecutive rows or columns per unit.

    Unit ``i`` owns indices ``i * width`` to ``(i + 1) * width - 1`` along ``dim``.

    Attributes:
        path: The linear layer's path, relative to the transformer layer.
        dim: 0 for output rows (and their bias entries), 1 for input columns.
        width: Rows or columns per unit (``head_dim`` for heads, 1 for neurons).
    """

    path: str
    dim: Dim
    width: int = 1

    def count(self, linear: nn.Linear) -> int:
        """How many units ``linear`` holds along this slice's dimension."""
        return linear.weight.shape[self.dim] // self.width

    def indices(self, units: torch.Tensor) -> torch.Tensor:
        """The rows (or columns) of the given units, in the units' order."""
        offsets = torch.arange(self.width, device=units.device)
        return (units[:, None] * self.width + offsets[None, :]).reshape(-1)  # (units * width,)

    def squared_norms(self, weight: torch.Tensor) -> torch.Tensor:
        """The sum of squares of each unit's rows (or columns) of ``weight``, shape ``(units,)``."""
        along = weight if self.dim == 0 else weight.t()  # (units * width, other)
        units = along.shape[0] // self.width
        per_unit = along.reshape(units, self.width * along.shape[1])  # (units, width * other)
        return per_unit.pow(2).sum(dim=1)  # (units,)

    def cost(self, linear: nn.Linear) -> tuple[int, int]:
        """``(parameters, weights)`` that one unit holds in ``linear``.

        Parameters count the unit's bias entries too (rows only: a column has none).
        """
        weights = self.width * linear.weight.shape[1 - self.dim]
        bias = self.width if self.dim == 0 and linear.bias is not None else 0
        return weights + bias, weights


def rows(path: str, width: int = 1) -> Slice:
    """A :class:`Slice` of output rows."""
    return Slice(path, 0, width)


def columns(path: str, width: int = 1) -> Slice:
    """A :class:`Slice` of input columns."""
    return Slice(path, 1, width)


@dataclass(frozen=True)
class LayerGroups:
    """The prunable units of one transformer layer, the same for every layer of a model.

    Attributes:
        head: The slices of one query head: query rows, attention-output columns.
        kv: The slices of one key/value group: key and value rows.
        neuron: The slices of one MLP neuron: input-projection rows, output-projection column.
        attention_block: The module that computes attention from the heads; a layer keeping no
            head has it replaced by :class:`ZeroHeadAttention`.

    Raises:
        ValueError: If ``head`` or ``neuron`` has not exactly one column slice (the projection
            that reads the units, where gates act), or ``kv`` has a column slice.
    """

    head: tuple[Slice, ...]
    kv: tuple[Slice, ...]
    neuron: tuple[Slice, ...]
    attention_block: str

    def __post_init__(self) -> None:
        for unit in UNITS:
            readers = sum(s.dim == 1 for s in self.slices(unit))
            if readers != (0 if unit == "kv" else 1):
                raise ValueError(f"{unit} group has {readers} column slices: {self.slices(unit)}")

    def slices(self, unit: Unit) -> tuple[Slice, ...]:
        """The slices that make one unit of kind ``unit``."""
        return {"head": self.head, "kv": self.kv, "neuron": self.neuron}[unit]

    def gate(self, unit: Literal["head", "neuron"]) -> Slice:
        """The column slice whose input is the units: scaling it scales each unit's output."""
        return next(s for s in self.slices(unit) if s.dim == 1)

    def linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """The layer's prunable linear layers that still exist, by path (relative to the layer).

        A layer keeping no head has lost its attention block's projections.
        """
        found = {s.path: _find(layer, s.path) for unit in UNITS for s in self.slices(unit)}
        for path, module in found.items():
            if module is not None and not isinstance(module, nn.Linear):
                raise TypeError(
                    f"{path} is a {type(module).__name__}; autoprune slices nn.Linear layers "
                    f"only (this family's layout needs a slicing rule for it)"
                )
        return {path: module for path, module in found.items() if isinstance(module, nn.Linear)}

    def count(self, layer: nn.Module, unit: Unit) -> int:
        """How many units of kind ``unit`` ``layer`` holds now (0 where its modules are gone)."""
        for s in self.slices(unit):
            linear = _find(layer, s.path)
            if isinstance(linear, nn.Linear):
                return s.count(linear)
        return 0

    def plan(self, keep: dict[Unit, torch.Tensor]) -> dict[str, tuple[Dim, torch.Tensor]]:
        """For each prunable linear path, the dimension to slice and the indices to keep.

        Args:
            keep: For every kind of unit, the indices of the units to keep, increasing.
        """
        return {s.path: (s.dim, s.indices(keep[unit])) for unit in UNITS for s in self.slices(unit)}


def _find(root: nn.Module, path: str) -> nn.Module | None:
    """The module at dotted ``path`` below ``root``, or None where it was pruned away."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


class ZeroHeadAttention(nn.Module):
    """Stands in for an attention block that keeps no head.

    It returns what the block returns, ``(output, None)``, where ``output`` is the output
    projection of an empty input (its bias, or zeros) or, without a projection inside the
    block, an empty ``(batch, seq, 0)`` tensor, so the layer keeps only its residual path.
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


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: Dim) -> nn.Linear:
    """A new linear layer keeping the given output rows (``dim=0``) or input columns (``dim=1``).

    The bias follows the rows; a :class:`MaskedLinear` keeps its mask sliced the same way.
    """
    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index)  # (rows, columns) kept
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


def slice_layer(
    layer: nn.Module, groups: LayerGroups, keep: dict[Unit, torch.Tensor]
) -> dict[str, tuple[Dim, torch.Tensor]]:
    """Physically keep only the given units of ``layer`` (in place); returns the plan followed.

    A layer left with no head has its attention block replaced by :class:`ZeroHeadAttention`
    (keeping the output projection if it lies inside the block); one left with no neuron keeps
    empty MLP projections, whose output is the output projection's bias.

    Args:
        layer: One transformer layer laid out as ``groups`` says.
        groups: The layer's prunable groups.
        keep: For every kind of unit, the indices of the units to keep, increasing. The caller
            keeps heads and key/value groups consistent (see :class:`autoprune.PruneConfig`).
    """
    plan = groups.plan(keep)
    for path, linear in groups.linears(layer).items():
        dim, index = plan[path]
        layer.set_submodule(path, slice_linear(linear, index, dim))
    block = groups.attention_block
    if len(keep["head"]) == 0 and not isinstance(layer.get_submodule(block), ZeroHeadAttention):
        reader = groups.gate("head").path
        inner = reader.removeprefix(block + ".")
        kept = {inner: layer.get_submodule(reader)} if inner != reader else {}
        layer.set_submodule(block, ZeroHeadAttention(kept))
    return plan
