"""Prunable groups: which rows and columns of which projections make one prunable unit.

A model family declares, once, a :class:`LayerGroups` for its transformer layers. It names
three kinds of unit:

- a query **head**: its ``head_dim`` rows of the query projection and its ``head_dim``
  columns of the attention output projection;
- a **key/value group**: its ``head_dim`` rows of the key and value projections. Under
  grouped-query attention one key/value head is read by ``heads / kv_heads`` consecutive query
  heads; without it, a key/value group belongs to one query head;
- an MLP **neuron**: its row of every input projection (the gate projection included, where
  there is one) and its column of the output projection.

Projections are ``nn.Linear`` or GPT-2's ``Conv1D`` layers, read as ``(out, in)`` matrices
(:mod:`autoprune.engine.projections`); a fused projection (query, key and value rows in one
``c_attn``) gives each unit kind its own block of rows.

This module is the one place that layout is interpreted. Slicing (:func:`slice_layer`),
magnitude scores (:meth:`Slice.squared_norms`), gates (:meth:`LayerGroups.gate`), the
prunable projections that masks cover (:meth:`LayerGroups.linears`) and the size model's
per-unit costs (:meth:`Slice.cost`) all read it and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from autoprune.engine.projections import (
    Projection,
    SlicedConv1D,
    as_matrix,
    empty_projection,
    is_projection,
    matrix_shape,
)
from autoprune.engine.sparsity import Masked

Unit = Literal["head", "kv", "neuron"]
UNITS: tuple[Unit, ...] = ("head", "kv", "neuron")
Dim = Literal[0, 1]


@dataclass(frozen=True)
class Slice:
    """One projection's share of a unit: ``width`` consecutive rows or columns per unit.

    Rows and columns are those of the projection's weight read as ``(out_features,
    in_features)`` (:func:`autoprune.engine.projections.as_matrix`). A fused projection
    (GPT-2's ``c_attn`` holds the query, key and value rows) lays ``parts`` equal blocks end to
    end along ``dim``; the slice is block ``part`` of them, and unit ``i`` owns its indices
    ``i * width`` to ``(i + 1) * width - 1``.

    Attributes:
        path: The projection's path, relative to the transformer layer.
        dim: 0 for output rows (and their bias entries), 1 for input columns.
        width: Rows or columns per unit (``head_dim`` for heads, 1 for neurons).
        part: Which of the ``parts`` blocks the units lie in.
        parts: Equal blocks along ``dim`` (1 for a projection that is not fused).
    """

    path: str
    dim: Dim
    width: int = 1
    part: int = 0
    parts: int = 1

    def count(self, projection: Projection) -> int:
        """How many units ``projection`` holds in this slice's block."""
        return matrix_shape(projection)[self.dim] // self.parts // self.width

    def indices(self, units: torch.Tensor, extent: int) -> torch.Tensor:
        """The rows (or columns) of the given units, in the units' order, in a projection of
        ``extent`` rows (or columns)."""
        start = self.part * (extent // self.parts)
        offsets = torch.arange(self.width, device=units.device)
        within = (units[:, None] * self.width + offsets[None, :]).reshape(-1)  # (units * width,)
        return start + within

    def squared_norms(self, weight: torch.Tensor) -> torch.Tensor:
        """The sum of squares of each unit's rows (or columns) of ``weight``, an ``(out, in)``
        matrix; shape ``(units,)``."""
        along = weight if self.dim == 0 else weight.t()  # (parts * units * width, other)
        block = along.shape[0] // self.parts
        along = along[self.part * block : (self.part + 1) * block]  # (units * width, other)
        units = block // self.width
        per_unit = along.reshape(units, self.width * along.shape[1])  # (units, width * other)
        return per_unit.pow(2).sum(dim=1)  # (units,)

    def cost(self, projection: Projection) -> tuple[int, int]:
        """``(parameters, weights)`` that one unit holds in ``projection``.

        Parameters count the unit's bias entries too (rows only: a column has none).
        """
        weights = self.width * matrix_shape(projection)[1 - self.dim]
        bias = self.width if self.dim == 0 and projection.bias is not None else 0
        return weights + bias, weights


def rows(path: str, width: int = 1, part: int = 0, parts: int = 1) -> Slice:
    """A :class:`Slice` of output rows (block ``part`` of ``parts`` in a fused projection)."""
    return Slice(path, 0, width, part, parts)


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
        for path, pairs in self._by_path().items():
            fused = [s for _, s in pairs]
            blocks = [s.part for s in fused]
            if len({(s.dim, s.parts) for s in fused}) != 1 or blocks != list(range(len(fused))):
                raise ValueError(f"{path}: its slices must be blocks 0.. of one dimension: {fused}")

    def slices(self, unit: Unit) -> tuple[Slice, ...]:
        """The slices that make one unit of kind ``unit``."""
        return {"head": self.head, "kv": self.kv, "neuron": self.neuron}[unit]

    def _by_path(self) -> dict[str, list[tuple[Unit, Slice]]]:
        """Every projection's slices (with their unit), block by block."""
        found: dict[str, list[tuple[Unit, Slice]]] = {}
        for unit in UNITS:
            for s in self.slices(unit):
                found.setdefault(s.path, []).append((unit, s))
        return {path: sorted(pairs, key=lambda pair: pair[1].part) for path, pairs in found.items()}

    def gate(self, unit: Literal["head", "neuron"]) -> Slice:
        """The column slice whose input is the units: scaling it scales each unit's output."""
        return next(s for s in self.slices(unit) if s.dim == 1)

    def linears(self, layer: nn.Module) -> dict[str, Projection]:
        """The layer's prunable projections that still exist, by path (relative to the layer).

        A layer keeping no head has lost its attention block's projections.
        """
        found = {path: _find(layer, path) for path in self._by_path()}
        for path, module in found.items():
            if module is not None and not is_projection(module):
                raise TypeError(
                    f"{path} is a {type(module).__name__}; autoprune slices nn.Linear and Conv1D "
                    f"layers only (this family's layout needs a slicing rule for it)"
                )
        return {path: module for path, module in found.items() if is_projection(module)}

    def count(self, layer: nn.Module, unit: Unit) -> int:
        """How many units of kind ``unit`` ``layer`` holds now (0 where its modules are gone)."""
        for s in self.slices(unit):
            projection = _find(layer, s.path)
            if is_projection(projection):
                return s.count(projection)
        return 0

    def plan(
        self, layer: nn.Module, keep: dict[Unit, torch.Tensor]
    ) -> dict[str, tuple[Dim, torch.Tensor]]:
        """For each prunable projection of ``layer`` that still exists, the dimension to slice
        and the indices to keep (a fused projection's blocks one after the other).

        Args:
            layer: One transformer layer laid out as these groups say.
            keep: For every kind of unit, the indices of the units to keep, increasing.
        """
        plan: dict[str, tuple[Dim, torch.Tensor]] = {}
        fused = self._by_path()
        for path, projection in self.linears(layer).items():
            dim = fused[path][0][1].dim
            extent = matrix_shape(projection)[dim]
            kept = [s.indices(keep[unit], extent) for unit, s in fused[path]]
            plan[path] = (dim, torch.cat(kept))
        return plan


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

    Given a key/value cache (a decoder generating), it still appends one zero key and value of
    width 1 per token at its ``layer_idx``: Hugging Face models read the cache's length from
    its first layer, which must count every token even when that layer attends to nothing.
    """

    def __init__(
        self, projections: dict[str, nn.Module] | None = None, layer_idx: int | None = None
    ) -> None:
        super().__init__()
        self.projection_name: str | None = None
        self.layer_idx = layer_idx
        for name, linear in (projections or {}).items():
            self.add_module(name, linear)
            self.projection_name = name

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: Any) -> tuple:
        batch, seq = hidden_states.shape[:2]
        cache = kwargs.get("cache")
        if cache is not None and self.layer_idx is not None:
            placeholder = hidden_states.new_zeros(batch, 1, seq, 1)  # (batch, 1, seq, 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)  # (batch, seq, 0)
        if self.projection_name is None:
            return empty, None
        projection = self.get_submodule(self.projection_name)
        return projection(empty), None  # (batch, seq, hidden)


def slice_projection(projection: Projection, index: torch.Tensor, dim: Dim) -> Projection:
    """A new projection of the same kind (a ``Conv1D`` becomes a :class:`SlicedConv1D`)
    keeping the given output rows (``dim=0``) or input columns (``dim=1``) of its ``(out, in)``
    weight.

    The bias follows the rows; a masked layer keeps its mask sliced the same way.
    """
    index = index.to(projection.weight.device)
    weight = as_matrix(projection, projection.weight.detach()).index_select(dim, index)
    bias = projection.bias.detach() if projection.bias is not None else None
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index)
    out_features, in_features = weight.shape  # (rows, columns) kept
    kind = SlicedConv1D if type(projection) is Conv1D else type(projection)
    new = empty_projection(kind, projection, in_features, out_features)
    with torch.no_grad():
        if isinstance(projection, Masked) and isinstance(new, Masked):
            as_matrix(new, new.mask).copy_(
                as_matrix(projection, projection.mask).index_select(dim, index)
            )
        as_matrix(new, new.weight).copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def slice_layer(
    layer: nn.Module, groups: LayerGroups, keep: dict[Unit, torch.Tensor]
) -> dict[str, tuple[Dim, torch.Tensor]]:
    """Physically keep only the given units of ``layer`` (in place); returns the plan followed.

    A layer left with no head has its attention block replaced by :class:`ZeroHeadAttention`
    (keeping the output projection if it lies inside the block, and the block's
    ``layer_idx``); one left with no neuron keeps empty MLP projections, whose output is the
    output projection's bias.

    Args:
        layer: One transformer layer laid out as ``groups`` says.
        groups: The layer's prunable groups.
        keep: For every kind of unit, the indices of the units to keep, increasing. The caller
            keeps heads and key/value groups consistent (see :class:`autoprune.PruneConfig`).
    """
    plan = groups.plan(layer, keep)
    for path, projection in groups.linears(layer).items():
        dim, index = plan[path]
        layer.set_submodule(path, slice_projection(projection, index, dim))
    block = groups.attention_block
    attention = layer.get_submodule(block)
    if len(keep["head"]) == 0 and not isinstance(attention, ZeroHeadAttention):
        reader = groups.gate("head").path
        inner = reader.removeprefix(block + ".")
        kept = {inner: layer.get_submodule(reader)} if inner != reader else {}
        layer.set_submodule(block, ZeroHeadAttention(kept, getattr(attention, "layer_idx", None)))
    return plan
