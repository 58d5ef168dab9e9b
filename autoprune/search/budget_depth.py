"""Budget-preserving depth pruning: which whole layers to keep.

A :class:`DepthBudget` is a :class:`~autoprune.search.levels.LevelSpace` with one slot per
layer and two levels: 0 drops the layer, 1 keeps it whole. A level costs what the layer holds
in the study's size unit, so in a model whose layers are alike, a target of ``0.75`` of the
prunable parameters removes a quarter of the layers, and moving a level keeps one layer in
place of another (EvoPress's depth search, Sieberling et al. 2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from autoprune.engine.measure import SizeModel, SizeUnit
from autoprune.engine.prune import PruneConfig, PruneConfigError
from autoprune.search.levels import BudgetError, LevelSpace


@dataclass(frozen=True)
class LayerSlot:
    """One layer, kept or dropped.

    Attributes:
        layer: The layer's index.
        whole: What the layer holds in the space's size unit.
    """

    layer: int
    whole: int

    @property
    def name(self) -> str:
        """``layers_3``: the slot's parameter name, as search spaces name it."""
        return f"layers_{self.layer}"

    @property
    def levels(self) -> int:
        return 1

    def cost(self, level: int) -> int:
        return self.whole if level else 0


class DepthBudget(LevelSpace[PruneConfig, LayerSlot]):
    """Sets of kept layers of one model at exact sizes (see the module).

    Its uniform allocation (:meth:`at`) keeps the first layers and drops the last ones (every
    layer is asked for the same fraction of itself; ties go to the earlier layer).

    Args:
        sizes: The size model of the dense model.
        unit: The size unit targets are in.

    Raises:
        BudgetError: If the model has fewer than two layers.
    """

    allocates = "whole layers"

    def __init__(self, sizes: SizeModel, unit: SizeUnit) -> None:
        if sizes.arch.num_layers < 2:
            raise BudgetError("a depth search needs a model of at least two layers")
        self.dense_config = PruneConfig.dense(sizes.arch)
        dense = getattr(sizes.dense, unit)
        slots = []
        for layer in range(sizes.arch.num_layers):
            flags = [i != layer for i in range(sizes.arch.num_layers)]
            without = getattr(sizes.size(replace(self.dense_config, layers=tuple(flags))), unit)
            slots.append(LayerSlot(layer, dense - without))
        super().__init__(sizes, unit, slots)

    def from_levels(self, levels: Sequence[int]) -> PruneConfig:
        """The dense configuration with the layers at level 0 dropped.

        Raises:
            BudgetError: If every layer is dropped.
        """
        try:
            return replace(self.dense_config, layers=tuple(bool(level) for level in levels))
        except PruneConfigError as error:
            raise BudgetError(str(error)) from None

    def levels_of(self, allocation: PruneConfig) -> list[int]:
        """1 for each kept layer; raises :class:`BudgetError` where ``allocation`` removes a
        head or neuron of a kept layer or makes one sparse."""
        kept = allocation.kept_layers()
        if len(kept) != len(self.slots):
            raise BudgetError(f"allocation has {len(kept)} layers, the model {len(self.slots)}")
        dense = self.dense_config
        for layer, keep in enumerate(kept):
            if keep and (
                allocation.heads[layer] != dense.heads[layer]
                or allocation.ffn[layer] != dense.ffn[layer]
                or allocation.sparsity[layer] != 0.0
            ):
                raise BudgetError(
                    f"layer {layer}: a depth allocation keeps a layer whole or drops it"
                )
        return [int(keep) for keep in kept]

    def to_config(self, allocation: PruneConfig) -> PruneConfig:
        """``allocation`` itself, checked to keep or drop whole layers."""
        self.levels_of(allocation)
        return allocation

    def by_influence(self, influence: Sequence[float] | torch.Tensor, target: float) -> PruneConfig:
        """The allocation of size ``target`` that keeps the layers of highest block influence
        (:mod:`autoprune.engine.influence`; ShortGPT drops the lowest), the earlier layer
        first where two are equal.

        Raises:
            BudgetError: If ``influence`` has not one value per layer, or ``target`` cannot be
                met.
        """
        values = [float(v) for v in influence]
        if len(values) != len(self.slots):
            raise BudgetError(f"influence has {len(values)} values for {len(self.slots)} layers")
        levels = [0] * len(self.slots)
        self._fill(levels, self._budget(target), lambda i: values[i])
        return self.from_levels(levels)
