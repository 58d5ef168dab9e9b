"""Budget-preserving allocations of heads and feed-forward neurons, in cost-equal units.

A :class:`BudgetSpace` lays a grid over one model: each (layer, dimension) *slot* keeps a
number of *levels*. One level of a layer's attention is one key/value group with all the
query heads that read it (without grouped-query attention: one head and its key/value
projections); one level of a feed-forward block is a block of neurons whose cost is as close
as possible to one attention level of that layer (its last level may be a smaller block:
it reaches the dense width). So moving one level from one slot to another leaves the size
nearly unchanged, which is what a budget-preserving search needs (EvoPress's level-switch
mutation, Sieberling et al. 2024).

Costs are counted in the study's size unit: ``prunable`` and ``params`` in parameters (they
differ only by what is never pruned, the embeddings), ``bytes`` in bytes of the saved
weights, ``macs`` in multiply-accumulates for one sequence. Sizes and targets are ratios to
the dense model in that unit, as :meth:`autoprune.engine.measure.Size.ratio` gives them.

The space's **unit** is the cost of its largest level (one attention level in models whose
layers are alike). Every allocation the space builds or mutates for a target ``t`` has a size
``s`` with ``|s - t| <= tolerance``, where ``tolerance`` is half a unit as a ratio to the
dense size (:attr:`BudgetSpace.tolerance`).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from autoprune.engine.arch import Architecture
from autoprune.engine.groups import Unit
from autoprune.engine.measure import SizeModel, SizeUnit
from autoprune.engine.prune import PruneConfig
from autoprune.engine.scores import Scores
from autoprune.errors import AutopruneError

SlotDimension = Literal["heads", "ffn"]


class BudgetError(AutopruneError, ValueError):
    """A target, allocation or weight vector that a budget space cannot take."""


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

    def step(self, level: int) -> int:
        """The cost of going from ``level - 1`` to ``level``."""
        return self.cost(level) - self.cost(level - 1)

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


def _floor_level(slot: Slot, cost: float) -> int:
    """The highest level of ``slot`` that keeps at most ``cost``."""
    return max(level for level in range(slot.levels + 1) if slot.cost(level) <= cost)


def _nearest_level(slot: Slot, count: int) -> int:
    """The level of ``slot`` whose count is nearest ``count`` (ties to the lower)."""
    return min(range(slot.levels + 1), key=lambda level: (abs(slot.counts[level] - count), level))


class BudgetSpace:
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

    def __init__(self, sizes: SizeModel, unit: SizeUnit) -> None:
        if unit == "nonzero":
            raise BudgetError(
                "size unit 'nonzero' counts unstructured sparsity, which a budget of heads and "
                "neurons cannot express; use prunable, params, bytes or macs"
            )
        if unit not in ("prunable", "params", "bytes", "macs"):
            raise BudgetError(f"size unit {unit!r} is not one of prunable, params, bytes, macs")
        self.sizes = sizes
        self.arch: Architecture = sizes.arch
        self.unit: SizeUnit = unit
        arch = self.arch
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
        self.slots: tuple[Slot, ...] = (*head_slots, *ffn_slots)
        self._dense = getattr(sizes.dense, unit)
        self._empty = self._dense - sum(slot.cost(slot.levels) for slot in self.slots)
        self.unit_cost = max(
            (slot.step(level) for slot in self.slots for level in range(1, slot.levels + 1)),
            default=0,
        )
        self.tolerance = self.unit_cost / 2 / self._dense

    # -- reading ---------------------------------------------------------------------------

    @property
    def smallest(self) -> float:
        """The size that keeps no head and no neuron (the lowest reachable target)."""
        return self._empty / self._dense

    def size(self, allocation: Allocation) -> float:
        """The size of ``allocation``, exactly ``SizeModel.size(config).ratio(dense, unit)``
        for its :meth:`to_config`."""
        return self.sizes.size(self.to_config(allocation)).ratio(self.sizes.dense, self.unit)

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

    def _kept(self, levels: Sequence[int]) -> int:
        """What ``levels`` keep, in the size unit (the size is this plus what is never cut)."""
        return sum(slot.cost(level) for slot, level in zip(self.slots, levels, strict=True))

    def _budget(self, target: float) -> float:
        """What an allocation of size ``target`` keeps, in the size unit."""
        if not (isinstance(target, int | float) and math.isfinite(target)):
            raise BudgetError(f"target {target!r} is not a number")
        low = self.smallest
        if not low <= target <= 1.0:
            raise BudgetError(
                f"target {target} ({self.unit}) cannot be met by heads and neurons: sizes "
                f"run from {low:.4f} (keeping none) to 1.0 (dense)"
            )
        return target * self._dense - self._empty

    # -- building --------------------------------------------------------------------------

    def at(self, target: float) -> Allocation:
        """The uniform allocation of size ``target``: every slot keeps the same fraction of
        its cost, rounded to levels by largest remainder (ties to the earlier slot).

        Guarantees ``|size - target| <= tolerance``; equal to ``decode`` of equal weights.

        Raises:
            BudgetError: If ``target`` is below :attr:`smallest` or above 1.
        """
        return self.decode([1.0] * len(self.slots), target)

    def decode(self, weights: Sequence[float], target: float) -> Allocation:
        """The allocation of size ``target`` that shares the budget by ``weights``.

        Each slot's share of the budget is proportional to its weight times its dense cost,
        capped at its dense cost (water-filling: what a full slot cannot take goes to the
        others by the same proportions; slots of weight 0 get a share only once every slot
        of positive weight is full). Shares are rounded down to levels, then single levels
        are added in order of the largest remainder (the fraction of the next level the
        share asks for; ties to the earlier slot) while that brings the size closer to the
        target. Equal weights give :meth:`at`'s uniform allocation.

        Args:
            weights: One number in ``[0, 1]`` per slot, in :attr:`slots` order (what a
                sampler proposes as float parameters named by :attr:`Slot.name`).
            target: The size, a ratio to the dense model in the space's unit.

        Guarantees ``|size - target| <= tolerance`` and every slot within ``[0, dense]``.

        Raises:
            BudgetError: If ``weights`` has the wrong length or a value outside ``[0, 1]``,
                or ``target`` cannot be met.
        """
        if len(weights) != len(self.slots):
            raise BudgetError(
                f"weights has {len(weights)} values, the space has {len(self.slots)} slots "
                f"({', '.join(s.name for s in self.slots)})"
            )
        for slot, weight in zip(self.slots, weights, strict=True):
            if not (isinstance(weight, int | float) and 0.0 <= weight <= 1.0):
                raise BudgetError(f"weights: {slot.name}={weight!r}, expected a number in [0, 1]")
        budget = self._budget(target)
        shares = self._water_fill([float(w) for w in weights], budget)
        levels = [_floor_level(slot, share) for slot, share in zip(self.slots, shares, strict=True)]

        def remainder(index: int) -> float:
            slot, level = self.slots[index], levels[index]
            return (shares[index] - slot.cost(level)) / slot.step(level + 1)

        self._fill(levels, budget, remainder)
        return self.from_levels(levels)

    def _water_fill(self, weights: list[float], budget: float) -> list[float]:
        """Per slot, a share of ``budget`` proportional to weight times dense cost, capped
        at the dense cost; the shares sum to ``budget``."""
        dense = [slot.cost(slot.levels) for slot in self.slots]
        shares = [0.0] * len(self.slots)
        open_slots = [i for i, cost in enumerate(dense) if cost > 0]
        left = budget
        while open_slots and left > 0:
            demand = sum(weights[i] * dense[i] for i in open_slots)
            if demand == 0:  # only zero weights left: they share what remains evenly
                weights = [1.0] * len(weights)
                continue
            scale = left / demand
            full = [i for i in open_slots if scale * weights[i] >= 1.0]
            if not full:
                for i in open_slots:
                    shares[i] = scale * weights[i] * dense[i]
                break
            for i in full:
                shares[i] = float(dense[i])
                left -= dense[i]
            open_slots = [i for i in open_slots if i not in full]
        return shares

    def _fill(
        self,
        levels: list[int],
        budget: float,
        priority: Callable[[int], float],
        *,
        remove: bool = False,
    ) -> None:
        """Move ``levels`` towards ``budget`` one level at a time, in place: add the level
        of highest ``priority`` (or, with ``remove``, take away the level of lowest), while
        that brings what is kept closer to ``budget``.

        Stops within half a level's cost of ``budget`` (``budget`` must be reachable): a level
        is left out only when it would overshoot by more than it would close.
        """
        kept = self._kept(levels)
        while kept > budget if remove else kept < budget:
            movable = [
                i
                for i, slot in enumerate(self.slots)
                if (levels[i] > 0 if remove else levels[i] < slot.levels)
            ]
            if remove:
                index = min(movable, key=lambda i: (priority(i), -i))
                cost = -self.slots[index].step(levels[index])
            else:
                index = max(movable, key=lambda i: (priority(i), -i))
                cost = self.slots[index].step(levels[index] + 1)
            if abs(kept + cost - budget) > abs(kept - budget):
                return
            levels[index] += -1 if remove else 1
            kept += cost

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
            cost = self.slots[index].step(levels[index] + 1)
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
            return sum(ranked[index][low:high]) / slot.step(level)

        if self._kept(levels) < budget:
            self._fill(levels, budget, lambda i: value(i, levels[i] + 1))
        else:
            self._fill(levels, budget, lambda i: value(i, levels[i]), remove=True)
        return self.from_levels(levels)

    # -- mutating --------------------------------------------------------------------------

    def mutate(
        self, allocation: Allocation, target: float, rng: random.Random, swaps: int = 1
    ) -> Allocation:
        """``allocation`` with ``swaps`` levels moved between slots, size kept at ``target``.

        Each swap (EvoPress's level switch) takes one level from a random slot that keeps
        some and gives one level to a random other slot that is not full, chosen among the
        moves that keep ``|size - target| <= tolerance`` (a feed-forward block costs a little
        more or less than an attention level, and a block that reaches the dense width less
        again). Where no slot can move without leaving the tolerance, fewer swaps are made.

        Guarantees every slot within ``[0, dense]`` and ``|size - target| <= tolerance``.

        Raises:
            BudgetError: If ``allocation`` is off the grid or not within the tolerance of
                ``target``, ``target`` cannot be met, or ``swaps`` is negative.
        """
        if swaps < 0:
            raise BudgetError(f"swaps must be >= 0, got {swaps}")
        budget = self._budget(target)
        levels = self.levels_of(allocation)
        kept = self._kept(levels)
        band = self.unit_cost / 2
        if abs(kept - budget) > band:
            raise BudgetError(
                f"allocation of size {self.size(allocation):.4f} is not within "
                f"{self.tolerance:.4f} of target {target}"
            )
        for _ in range(swaps):
            givers = [i for i in range(len(self.slots)) if levels[i] > 0]
            rng.shuffle(givers)
            for giver in givers:
                after = kept - self.slots[giver].step(levels[giver])
                takers = [
                    i
                    for i, slot in enumerate(self.slots)
                    if i != giver
                    and levels[i] < slot.levels
                    and abs(after + slot.step(levels[i] + 1) - budget) <= band
                ]
                if takers:
                    taker = rng.choice(takers)
                    levels[giver] -= 1
                    levels[taker] += 1
                    kept = after + self.slots[taker].step(levels[taker])
                    break
        return self.from_levels(levels)
