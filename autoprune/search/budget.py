"""Budget-preserving allocations of heads and feed-forward neurons, in cost-equal units.

A :class:`BudgetSpace` is a :class:`~autoprune.search.levels.LevelSpace` whose slots are each
layer's attention and feed-forward block. One level of a layer's attention is one key/value
group with all the query heads that read it (without grouped-query attention: one head and
its key/value projections); one level of a feed-forward block is a block of neurons whose
cost is as close as possible to one attention level of that layer (its last level may be a
smaller block: it reaches the dense width). So moving one level from one slot to another
leaves the size nearly unchanged, which is what a budget-preserving search needs (EvoPress's
level-switch mutation, Sieberling et al. 2024).

Costs are counted in the study's size unit: ``prunable`` and ``params`` in parameters (they
differ only by what is never pruned, the embeddings), ``bytes`` in bytes of the saved
weights, ``macs`` in multiply-accumulates for one sequence. The space's unit is one attention
level in models whose layers are alike.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from autoprune.engine.groups import Unit
from autoprune.engine.measure import SizeModel, SizeUnit
from autoprune.engine.prune import PruneConfig
from autoprune.engine.scores import Scores
from autoprune.search.levels import BudgetError, LevelSpace, step

SlotDimension = Literal["heads", "ffn"]


@dataclass(frozen=True)
class Allocation:
    """Per-layer kept query heads and kept feed-forward neurons, on a space's grid.

    Attributes:
        heads: Query heads kept in each layer (whole key/value groups with all their heads).
        neurons: Feed-forward neurons kept in each layer: a multiple of the layer's block, or
            the dense width.
    """

    heads: tuple[int, ...]
    neurons: tuple[int, ...]


@dataclass(frozen=True)
class Slot:
    """One layer's attention or feed-forward block, as levels.

    Attributes:
        dimension: ``heads`` or ``ffn``.
        layer: The layer's index.
        per_unit: Query heads in one unit of the slot (a key/value group's; 1 without
            grouped-query attention), or 1 neuron.
        unit_cost: The cost of one unit (a key/value group with its query heads, or a
            neuron), in the space's size unit.
        counts: Query heads or neurons kept at each level, from 0 (level 0) to the dense
            width (the last level), increasing; multiples of ``per_unit``.
    """

    dimension: SlotDimension
    layer: int
    per_unit: int
    unit_cost: int
    counts: tuple[int, ...]

    @property
    def name(self) -> str:
        """``heads_3`` or ``ffn_3``: the slot's parameter name, as search spaces name them."""
        return f"{self.dimension}_{self.layer}"

    @property
    def levels(self) -> int:
        """The dense level (the number of levels above 0)."""
        return len(self.counts) - 1

    def cost(self, level: int) -> int:
        """What ``level`` keeps, in the space's size unit."""
        return self.counts[level] // self.per_unit * self.unit_cost

    def level_of(self, count: int) -> int:
        """The level that keeps ``count``; raises :class:`BudgetError` off the grid."""
        level = bisect.bisect_left(self.counts, count)
        if level == len(self.counts) or self.counts[level] != count:
            field = "heads" if self.dimension == "heads" else "neurons"
            raise BudgetError(
                f"layer {self.layer}: {field}={count} is not on the budget grid; "
                f"allowed: {', '.join(map(str, self.counts))}"
            )
        return level


def _unit_cost(sizes: SizeModel, layer: int, unit: Unit, size_unit: SizeUnit) -> int:
    """The cost of one ``unit`` (head, kv, neuron) of ``layer`` in ``size_unit``."""
    cost = sizes.costs[layer][unit]
    if size_unit == "macs":
        return cost.macs
    if size_unit == "bytes":
        return cost.params * sizes.bytes_per_param
    return cost.params


def _nearest_level(slot: Slot, count: int) -> int:
    """The level of ``slot`` whose count is nearest ``count`` (ties to the lower)."""
    return min(range(slot.levels + 1), key=lambda level: (abs(slot.counts[level] - count), level))


class BudgetSpace(LevelSpace[Allocation, Slot]):
    """Allocations of one model's heads and neurons at exact sizes.

    Args:
        sizes: The size model of the dense model.
        unit: The size unit targets are in: ``prunable``, ``params``, ``bytes`` or ``macs``.

    Raises:
        BudgetError: If ``unit`` is ``nonzero`` (unstructured sparsity, which heads and
            neurons do not express) or not a size unit.

    Attributes:
        sizes: The size model the space was built from.
        arch: The dense model's architecture.
        unit: The size unit.
        slots: The heads slot of every layer, then the ffn slot of every layer.
        unit_cost: The cost of the largest level of any slot, in ``unit``.
        tolerance: Half of ``unit_cost`` as a ratio to the dense size: every allocation built
            or mutated for a target is within it of the target.
    """

    allocates = "heads and neurons"

    def __init__(self, sizes: SizeModel, unit: SizeUnit) -> None:
        if unit == "nonzero":
            raise BudgetError(
                "size unit 'nonzero' counts unstructured sparsity, which a budget of heads and "
                "neurons cannot express; use prunable, params, bytes or macs"
            )
        if unit not in ("prunable", "params", "bytes", "macs"):
            raise BudgetError(f"size unit {unit!r} is not one of prunable, params, bytes, macs")
        arch = sizes.arch
        head_slots, ffn_slots = [], []
        for layer in range(arch.num_layers):
            kv, group = arch.kv_heads[layer], max(arch.group_size(layer), 1)
            attention = group * _unit_cost(sizes, layer, "head", unit)
            attention += _unit_cost(sizes, layer, "kv", unit)
            counts = tuple(k * group for k in range(kv + 1))
            head_slots.append(Slot("heads", layer, group, attention, counts))
            neuron = _unit_cost(sizes, layer, "neuron", unit)
            width = arch.ffn[layer]
            block = max(1, round(attention / neuron)) if attention else max(width, 1)
            counts = (*range(0, width, block), width) if width else (0,)
            ffn_slots.append(Slot("ffn", layer, 1, neuron, counts))
        super().__init__(sizes, unit, (*head_slots, *ffn_slots))

    # -- what a level is ----------------------------------------------------------------

    def to_config(self, allocation: Allocation) -> PruneConfig:
        """The PruneConfig that keeps ``allocation``'s heads (in whole key/value groups)
        and neurons, without sparsity.

        Raises:
            BudgetError: If ``allocation`` is not on this space's grid.
        """
        self.levels_of(allocation)
        arch = self.arch
        grouped = any(arch.group_size(layer) > 1 for layer in range(arch.num_layers))
        kv_heads = [
            h // arch.group_size(layer) if h else 0 for layer, h in enumerate(allocation.heads)
        ]
        return PruneConfig(
            heads=list(allocation.heads),
            ffn=list(allocation.neurons),
            kv_heads=kv_heads if grouped else None,
        )

    def levels_of(self, allocation: Allocation) -> list[int]:
        """Every slot's level in ``allocation`` (slot order); raises off the grid."""
        layers = self.arch.num_layers
        for field, values in (("heads", allocation.heads), ("neurons", allocation.neurons)):
            if len(values) != layers:
                raise BudgetError(
                    f"allocation {field} has {len(values)} entries, the model has {layers} layers"
                )
        counts = (*allocation.heads, *allocation.neurons)
        return [slot.level_of(count) for slot, count in zip(self.slots, counts, strict=True)]

    def from_levels(self, levels: Sequence[int]) -> Allocation:
        """The allocation keeping ``levels`` (one per slot, in :attr:`slots` order)."""
        counts = [slot.counts[level] for slot, level in zip(self.slots, levels, strict=True)]
        layers = self.arch.num_layers
        return Allocation(heads=tuple(counts[:layers]), neurons=tuple(counts[layers:]))

    # -- heuristics at a target ----------------------------------------------------------

    def layer_uniform(self, heads: int, target: float) -> Allocation:
        """The allocation of size ``target`` that keeps ``heads`` query heads in every layer
        and shares the rest evenly among the feed-forward blocks: every block keeps the same
        number of levels, or one more (the earlier layers first).

        Guarantees ``|size - target| <= tolerance`` and the same heads in every layer.

        Raises:
            BudgetError: If ``heads`` is not on every layer's grid, or ``target`` cannot be
                met with ``heads`` heads in every layer.
        """
        budget = self._budget(target)
        levels = [slot.level_of(heads) if slot.dimension == "heads" else 0 for slot in self.slots]
        ffn = [i for i, slot in enumerate(self.slots) if slot.dimension == "ffn"]
        kept = self._kept(levels)
        while kept < budget:
            growing = [i for i in ffn if levels[i] < self.slots[i].levels]
            if not growing:
                break
            index = min(growing, key=lambda i: (levels[i], i))
            cost = step(self.slots[index], levels[index] + 1)
            if abs(kept + cost - budget) > abs(kept - budget):
                break
            levels[index] += 1
            kept += cost
        if abs(kept - budget) > self.unit_cost / 2:
            raise BudgetError(
                f"target {target}: with {heads} heads in every layer the size is "
                f"{(kept + self._empty) / self._dense:.4f}; the feed-forward blocks cannot "
                "make up the difference"
            )
        return self.from_levels(levels)

    def layer_uniform_choices(self, target: float) -> list[Allocation]:
        """Every :meth:`layer_uniform` allocation of size ``target``, one per head count
        that can meet it (fewest heads first).

        Raises:
            BudgetError: If ``target`` is below :attr:`smallest` or above 1.
        """
        self._budget(target)
        head_counts = set.intersection(
            *(set(slot.counts) for slot in self.slots if slot.dimension == "heads")
        )
        choices = []
        for heads in sorted(head_counts):
            try:
                choices.append(self.layer_uniform(heads, target))
            except BudgetError:
                continue
        return choices

    def global_allocation(self, scores: Scores, target: float) -> Allocation:
        """The allocation of size ``target`` that keeps the most importance per cost.

        Kwon et al. 2022's mask search under a cost budget: every attention level (a
        key/value group with its query heads, worth the sum of their scores) and every neuron
        of every layer is ranked by its score per unit of cost, and the best are kept until
        the next would exceed the budget. Each layer's neurons are then rounded to the
        nearest level, and the budget is repaired one level at a time: adding the level with
        the highest score per cost (the next best neurons or group of a slot) while the size
        is below the target, or removing the level with the lowest while above, as long as
        that brings the size closer. Within a slot the best-scored units are kept, as
        :func:`autoprune.prune` keeps them.

        Guarantees ``|size - target| <= tolerance``.

        Raises:
            BudgetError: If ``target`` cannot be met.
            ValueError: If ``scores`` do not fit the model.
        """
        scores.check(self.arch)
        budget = self._budget(target)
        ranked: list[list[float]] = []  # per slot, its units' scores, best first
        for slot in self.slots:
            if slot.dimension == "heads":
                heads = scores.heads[slot.layer].float()  # (heads,)
                units = heads.view(-1, slot.per_unit).sum(dim=1)  # (kv_heads,)
            else:
                units = scores.neurons[slot.layer].float()  # (ffn,)
            ranked.append(torch.sort(units, descending=True).values.tolist())
        candidates = sorted(
            (
                (value / self.slots[i].unit_cost, i)
                for i, values in enumerate(ranked)
                for value in values
            ),
            key=lambda pair: -pair[0],
        )
        kept_units = [0] * len(self.slots)
        kept = 0
        for _, index in candidates:
            cost = self.slots[index].unit_cost
            if kept + cost > budget:
                break
            kept_units[index] += 1
            kept += cost
        levels = [
            _nearest_level(slot, units * slot.per_unit)
            for slot, units in zip(self.slots, kept_units, strict=True)
        ]

        def value(index: int, level: int) -> float:
            """Score per cost of ``level`` of slot ``index`` (its units above the level below)."""
            slot = self.slots[index]
            low, high = slot.counts[level - 1] // slot.per_unit, slot.counts[level] // slot.per_unit
            return sum(ranked[index][low:high]) / step(slot, level)

        if self._kept(levels) < budget:
            self._fill(levels, budget, lambda i: value(i, levels[i] + 1))
        else:
            self._fill(levels, budget, lambda i: value(i, levels[i]), remove=True)
        return self.from_levels(levels)
