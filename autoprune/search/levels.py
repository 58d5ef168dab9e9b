"""Exact-size allocations over per-layer levels: what every budget space shares.

A budget space lays a grid over one model: each *slot* (a layer's attention, feed-forward
block, sparsity or the layer itself) keeps one of a few *levels*, level 0 keeping the least
and the last level the most, each level costing a known amount in the study's size unit.
An allocation is one level per slot; its size is what the levels keep plus what is never
cut. :class:`LevelSpace` builds and changes allocations of a target size without building a
model: the uniform one, one that shares the budget by given weights, one nearest a given
wish, and a child with a few levels moved between slots (EvoPress's level switch,
Sieberling et al. 2024). What a level *is* (heads, neurons, a sparsity, a kept layer) is
the subclass's: :class:`~autoprune.search.budget.BudgetSpace` (heads and neurons),
:class:`~autoprune.search.budget_sparsity.SparsityBudget`,
:class:`~autoprune.search.budget_depth.DepthBudget`.

Sizes and targets are ratios to the dense model in the space's unit, as
:meth:`autoprune.engine.measure.Size.ratio` gives them. The space's **unit** is the cost of its
largest level step; every allocation built or mutated for a target ``t`` has a size ``s``
with ``|s - t| <= tolerance``, half a unit as a ratio to the dense size.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Generic, Literal, Protocol, TypeVar

from autoprune.engine.measure import SizeModel, SizeUnit
from autoprune.engine.prune import PruneConfig
from autoprune.errors import AutopruneError

A = TypeVar("A")
Heuristic = Literal["uniform", "global", "owl", "block-influence"]
"""The allocations of a target size that rules of thumb give in a budget space: ``uniform`` in
every space, then one per space (``global`` for heads and neurons, ``owl`` for sparsity,
``block-influence`` for kept layers)."""


class BudgetError(AutopruneError, ValueError):
    """A target, allocation or weight vector that a budget space cannot take."""


class LevelSlot(Protocol):
    """One slot of a budget space, as levels of increasing cost."""

    @property
    def name(self) -> str:
        """The slot's parameter name, as search spaces name them (``heads_3``)."""
        ...

    @property
    def levels(self) -> int:
        """The highest level (the number of levels above 0)."""
        ...

    def cost(self, level: int) -> int:
        """What ``level`` keeps, in the space's size unit."""
        ...


S = TypeVar("S", bound=LevelSlot)


def step(slot: LevelSlot, level: int) -> int:
    """The cost of going from ``level - 1`` to ``level`` of ``slot``."""
    return slot.cost(level) - slot.cost(level - 1)


def floor_level(slot: LevelSlot, cost: float) -> int:
    """The highest level of ``slot`` that keeps at most ``cost`` (level 0 if none does)."""
    return max((level for level in range(slot.levels + 1) if slot.cost(level) <= cost), default=0)


class LevelSpace(ABC, Generic[A, S]):
    """Allocations (of type ``A``) of one model at exact sizes, over ``slots`` (of type ``S``).

    Args:
        sizes: The size model of the dense model.
        unit: The size unit targets are in.
        slots: The space's slots; the subclass says what their levels keep.

    Attributes:
        sizes: The size model the space was built from.
        arch: The dense model's architecture.
        unit: The size unit.
        slots: The slots, in the order levels are listed.
        unit_cost: The largest cost of one level step of any slot, in ``unit``.
        tolerance: Half of ``unit_cost`` as a ratio to the dense size: every allocation built
            or mutated for a target is within it of the target.
    """

    allocates = "levels"
    """What the space's levels are, in words (for messages)."""

    def __init__(self, sizes: SizeModel, unit: SizeUnit, slots: Sequence[S]) -> None:
        self.sizes = sizes
        self.arch = sizes.arch
        self.unit: SizeUnit = unit
        self.slots: tuple[S, ...] = tuple(slots)
        self._dense = getattr(sizes.dense, unit)
        self._empty = self._dense - sum(slot.cost(slot.levels) for slot in self.slots)
        self.unit_cost = max(
            (step(slot, level) for slot in self.slots for level in range(1, slot.levels + 1)),
            default=0,
        )
        self.tolerance = self.unit_cost / 2 / self._dense

    # -- what a level is: the subclass's ------------------------------------------------------

    @abstractmethod
    def from_levels(self, levels: Sequence[int]) -> A:
        """The allocation keeping ``levels`` (one per slot, in :attr:`slots` order)."""

    @abstractmethod
    def levels_of(self, allocation: A) -> list[int]:
        """Every slot's level in ``allocation`` (slot order); raises BudgetError off the grid."""

    @abstractmethod
    def to_config(self, allocation: A) -> PruneConfig:
        """The PruneConfig that keeps what ``allocation`` keeps."""

    # -- reading ---------------------------------------------------------------------------

    @property
    def smallest(self) -> float:
        """The size with every slot at level 0 (the lowest reachable target)."""
        return (self._empty + sum(slot.cost(0) for slot in self.slots)) / self._dense

    @property
    def largest(self) -> float:
        """The size with every slot at its highest level (1.0 where that is the dense model)."""
        return (self._empty + sum(slot.cost(slot.levels) for slot in self.slots)) / self._dense

    def size(self, allocation: A) -> float:
        """The size of ``allocation``, exactly ``SizeModel.size(config).ratio(dense, unit)``
        for its :meth:`to_config`."""
        return self.sizes.size(self.to_config(allocation)).ratio(self.sizes.dense, self.unit)

    def _kept(self, levels: Sequence[int]) -> int:
        """What ``levels`` keep, in the size unit (the size is this plus what is never cut)."""
        return sum(slot.cost(level) for slot, level in zip(self.slots, levels, strict=True))

    def _budget(self, target: float) -> float:
        """What an allocation of size ``target`` keeps, in the size unit."""
        if not (isinstance(target, int | float) and math.isfinite(target)):
            raise BudgetError(f"target {target!r} is not a number")
        low, high = self.smallest, self.largest
        if not low - 1e-12 <= target <= high + 1e-12:
            raise BudgetError(
                f"target {target} ({self.unit}) cannot be met by {self.allocates}: sizes "
                f"run from {low:.4f} (every slot at its lowest level) to {high:.4f}"
            )
        return target * self._dense - self._empty

    # -- building --------------------------------------------------------------------------

    def at(self, target: float) -> A:
        """The uniform allocation of size ``target``: every slot keeps the same fraction of
        its cost, rounded to levels by largest remainder (ties to the earlier slot).

        Guarantees ``|size - target| <= tolerance``; equal to ``decode`` of equal weights.

        Raises:
            BudgetError: If ``target`` is out of the space's reach.
        """
        return self.decode([1.0] * len(self.slots), target)

    def decode(self, weights: Sequence[float], target: float) -> A:
        """The allocation of size ``target`` that shares the budget by ``weights``.

        Each slot's share of the budget is proportional to its weight times its highest
        level's cost, capped at that cost (water-filling: what a full slot cannot take goes to
        the others by the same proportions; slots of weight 0 get a share only once every
        slot of positive weight is full). Shares are rounded to levels by :meth:`_from_shares`.
        Equal weights give :meth:`at`'s uniform allocation.

        Args:
            weights: One number in ``[0, 1]`` per slot, in :attr:`slots` order (what a
                sampler proposes as float parameters named by the slots' names).
            target: The size, a ratio to the dense model in the space's unit.

        Guarantees ``|size - target| <= tolerance``.

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
        return self.from_levels(self._from_shares(shares, budget))

    def nearest(self, wished: Sequence[float], target: float) -> A:
        """The allocation of size ``target`` nearest ``wished``, each slot's wished cost in
        the size unit (a heuristic's allocation off the grid, such as OWL's sparsities).

        Guarantees ``|size - target| <= tolerance``.

        Raises:
            BudgetError: If ``wished`` has not one cost per slot, or ``target`` cannot be met.
        """
        if len(wished) != len(self.slots):
            raise BudgetError(f"wished has {len(wished)} costs, the space has {len(self.slots)}")
        return self.from_levels(self._from_shares(list(wished), self._budget(target)))

    def _from_shares(self, shares: list[float], budget: float) -> list[int]:
        """Levels for per-slot ``shares`` of ``budget``: each share rounded down to a level,
        then single levels added in order of the largest remainder (the fraction of the next
        level the share asks for; ties to the earlier slot) while that brings what is kept
        closer to ``budget``, or, where the rounded levels keep too much, taken away in order
        of the largest excess over the share."""
        levels = [floor_level(slot, share) for slot, share in zip(self.slots, shares, strict=True)]

        def remainder(index: int) -> float:
            slot, level = self.slots[index], levels[index]
            if level == slot.levels:
                return -math.inf
            return (shares[index] - slot.cost(level)) / step(slot, level + 1)

        def shortfall(index: int) -> float:
            slot, level = self.slots[index], levels[index]
            return (shares[index] - slot.cost(level)) / step(slot, level)

        if self._kept(levels) <= budget:
            self._fill(levels, budget, remainder)
        else:
            self._fill(levels, budget, shortfall, remove=True)
        return levels

    def _water_fill(self, weights: list[float], budget: float) -> list[float]:
        """Per slot, a share of ``budget`` proportional to weight times highest cost, capped
        at that cost; the shares sum to ``budget``."""
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
            if not movable:
                return
            if remove:
                index = min(movable, key=lambda i: (priority(i), -i))
                cost = -step(self.slots[index], levels[index])
            else:
                index = max(movable, key=lambda i: (priority(i), -i))
                cost = step(self.slots[index], levels[index] + 1)
            if abs(kept + cost - budget) > abs(kept - budget):
                return
            levels[index] += -1 if remove else 1
            kept += cost

    # -- mutating --------------------------------------------------------------------------

    def mutate(self, allocation: A, target: float, rng: random.Random, swaps: int = 1) -> A:
        """``allocation`` with ``swaps`` levels moved between slots, size kept at ``target``.

        Each swap (EvoPress's level switch) takes one level from a random slot that keeps
        some and gives one level to a random other slot that is not full, chosen among the
        moves that keep ``|size - target| <= tolerance`` (levels of different slots may cost
        a little more or less than each other). Where no slot can move without leaving the
        tolerance, fewer swaps are made.

        Guarantees every slot on its grid and ``|size - target| <= tolerance``.

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
                after = kept - step(self.slots[giver], levels[giver])
                takers = [
                    i
                    for i, slot in enumerate(self.slots)
                    if i != giver
                    and levels[i] < slot.levels
                    and abs(after + step(slot, levels[i] + 1) - budget) <= band
                ]
                if takers:
                    taker = rng.choice(takers)
                    levels[giver] -= 1
                    levels[taker] += 1
                    kept = after + step(self.slots[taker], levels[taker])
                    break
        return self.from_levels(levels)
