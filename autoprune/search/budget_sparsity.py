"""Budget-preserving allocations of unstructured sparsity: one sparsity level per layer.

A :class:`SparsityBudget` is a :class:`~autoprune.search.levels.LevelSpace` with one slot per
layer whose levels are the sparsities of a grid (``0.0, 0.05, ..., 0.95``, say), level 0 the
sparsest; a level keeps the layer's prunable weights that the sparsity leaves (every head and
neuron stays). Its size unit is ``nonzero`` (non-zero weights of the prunable projections),
the only unit that sparsity changes, so a target of ``0.3`` is a mean sparsity of 0.7 over
the prunable weights (layers of different widths weighted by their weights). Layers with as
many weights cost the same per level, so moving a level from one layer to another keeps the
size: EvoPress's level switch for unstructured sparsity (Sieberling et al. 2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from autoprune.engine.measure import SizeModel, SizeUnit
from autoprune.engine.owl import outlier_ratios, owl_sparsity
from autoprune.engine.prune import PruneConfig
from autoprune.engine.scores import Scores
from autoprune.search.levels import BudgetError, LevelSpace


@dataclass(frozen=True)
class SparsitySlot:
    """One layer's sparsity, as levels.

    Attributes:
        layer: The layer's index.
        weights: The layer's prunable weights (every head and neuron kept).
        sparsities: The sparsity at each level, decreasing from level 0.
    """

    layer: int
    weights: int
    sparsities: tuple[float, ...]

    @property
    def name(self) -> str:
        """``sparsity_3``: the slot's parameter name, as search spaces name it."""
        return f"sparsity_{self.layer}"

    @property
    def levels(self) -> int:
        return len(self.sparsities) - 1

    def cost(self, level: int) -> int:
        """The weights ``level`` leaves non-zero, as :class:`SizeModel` counts them."""
        return self.weights - round(self.sparsities[level] * self.weights)


def sparsity_grid(low: float, high: float, step: float) -> tuple[float, ...]:
    """The sparsities ``low, low + step, ..., high`` (rounded to 9 decimals), as a search
    space's ``sparsity`` dimension lists them.

    Raises:
        BudgetError: If the range is empty, ``step`` is not positive or ``high >= 1``.
    """
    if not (step > 0 and 0.0 <= low <= high < 1.0):
        raise BudgetError(
            f"sparsity grid: min {low}, max {high}, step {step}: expected 0 <= min <= max < 1 "
            "and step > 0"
        )
    count = int(round((high - low) / step, 9))
    return tuple(round(low + k * step, 9) for k in range(count + 1))


class SparsityBudget(LevelSpace[PruneConfig, SparsitySlot]):
    """Per-layer sparsities of one model at exact sizes (see the module).

    Args:
        sizes: The size model of the dense model.
        unit: The size unit targets are in; must be ``nonzero``.
        grid: The sparsities a layer may take (any order; at least two).

    Raises:
        BudgetError: If ``unit`` is not ``nonzero``, or ``grid`` has fewer than two
            sparsities or one outside ``[0, 1)``.
    """

    allocates = "per-layer sparsity"

    def __init__(self, sizes: SizeModel, unit: SizeUnit, grid: Sequence[float]) -> None:
        if unit != "nonzero":
            raise BudgetError(
                f"a search of per-layer sparsity needs objectives.size: nonzero (sparsity "
                f"changes no other size unit); got {unit!r}"
            )
        levels = tuple(sorted(set(grid), reverse=True))
        if len(levels) < 2 or not all(0.0 <= s < 1.0 for s in levels):
            raise BudgetError(
                f"sparsity grid {list(grid)}: expected at least two sparsities in [0, 1)"
            )
        arch = sizes.arch
        dense_units = {"head": arch.heads, "kv": arch.kv_heads, "neuron": arch.ffn}
        slots = []
        for layer, costs in enumerate(sizes.costs):
            weights = sum(dense_units[unit][layer] * cost.weights for unit, cost in costs.items())
            slots.append(SparsitySlot(layer, weights, levels))
        self.dense_config = PruneConfig.dense(arch)
        super().__init__(sizes, unit, slots)

    def from_levels(self, levels: Sequence[int]) -> PruneConfig:
        sparsity = [slot.sparsities[lv] for slot, lv in zip(self.slots, levels, strict=True)]
        return replace(self.dense_config, sparsity=tuple(sparsity))

    def levels_of(self, allocation: PruneConfig) -> list[int]:
        """Each layer's level; raises :class:`BudgetError` where ``allocation`` removes a
        head, neuron or layer, or a sparsity is not on the grid."""
        dense = self.dense_config
        if (allocation.heads, allocation.ffn, allocation.layers) != (
            dense.heads,
            dense.ffn,
            dense.layers,
        ):
            raise BudgetError("a sparsity allocation keeps every head, neuron and layer")
        if allocation.num_layers != len(self.slots):
            raise BudgetError(
                f"allocation has {allocation.num_layers} layers, the model {len(self.slots)}"
            )
        levels = []
        for slot, sparsity in zip(self.slots, allocation.sparsity, strict=True):
            found = [i for i, s in enumerate(slot.sparsities) if abs(s - sparsity) < 1e-9]
            if not found:
                raise BudgetError(
                    f"layer {slot.layer}: sparsity={sparsity} is not on the budget grid; "
                    f"allowed: {', '.join(f'{s:g}' for s in sorted(slot.sparsities))}"
                )
            levels.append(found[0])
        return levels

    def to_config(self, allocation: PruneConfig) -> PruneConfig:
        """``allocation`` itself, checked to be on the grid."""
        self.levels_of(allocation)
        return allocation

    def mean_sparsity(self, target: float) -> float:
        """The sparsity every layer would take for a size of ``target`` (the weighted mean
        sparsity of any allocation of that size)."""
        weights = sum(slot.weights for slot in self.slots)
        return 1.0 - self._budget(target) / weights

    def owl(self, scores: Scores, target: float, lam: float = 0.08) -> PruneConfig:
        """OWL's allocation (:mod:`autoprune.engine.owl`, ``M = 5``) of size ``target``, on
        the grid: each layer's OWL sparsity for the target's mean, then the nearest levels
        that meet the target (:meth:`nearest`).

        Raises:
            BudgetError: If ``scores`` hold no per-weight scores (OWL reads Wanda's), or OWL's
                range around the mean leaves ``[0, 1)``.
        """
        try:
            sparsity = owl_sparsity(outlier_ratios(scores), self.mean_sparsity(target), lam)
        except ValueError as error:
            raise BudgetError(f"owl: {error}") from None
        wished = [slot.weights * (1.0 - s) for slot, s in zip(self.slots, sparsity, strict=True)]
        return self.nearest(wished, target)
