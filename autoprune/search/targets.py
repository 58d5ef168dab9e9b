"""A controller's parameters as an allocation of exactly a target size.

A targeted search explores, for each target size, only allocations of that size. Every
controller proposes Optuna parameters, one per (layer, dimension) slot of the
:class:`~autoprune.search.budget.BudgetSpace`, named as search spaces name them
(``heads_3``, ``ffn_3``):

- ``levels`` (the evolutionary controller): each parameter is the slot's level; a child is
  its parent with a few levels switched between slots (:meth:`TargetEncoding.mutate`), so
  every proposal has the target size by construction.
- ``weights`` (tpe, gp, nsga2, nsga3, rl, random): each parameter is a weight in [0, 1];
  the decoder shares the target's budget among the slots by these weights
  (:meth:`BudgetSpace.decode`), so no proposal is ever rejected for its size.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from autoprune.engine.prune import PruneConfig
from autoprune.search.budget import Allocation, BudgetSpace

Encoding = Literal["levels", "weights"]


class TargetEncoding:
    """Parameters <-> allocations of one target size.

    Args:
        space: The budget space of the dense model.
        target: The size, a ratio to the dense model in the space's unit.
        encoding: ``levels`` or ``weights`` (see the module's docstring).
        swaps: Levels switched per child by :meth:`mutate`.

    Every allocation :meth:`decode` returns is within ``space.tolerance`` of ``target``.
    """

    def __init__(
        self, space: BudgetSpace, target: float, encoding: Encoding, swaps: int = 2
    ) -> None:
        space.at(target)  # raises BudgetError naming a target that cannot be met
        self.space = space
        self.target = target
        self.encoding: Encoding = encoding
        self.swaps = swaps

    def distributions(self) -> dict[str, BaseDistribution]:
        """One parameter per slot: its level (0 to dense) or its weight in [0, 1]."""
        if self.encoding == "levels":
            return {s.name: IntDistribution(0, s.levels) for s in self.space.slots}
        return {s.name: FloatDistribution(0.0, 1.0) for s in self.space.slots}

    def decode(self, params: dict[str, Any]) -> Allocation:
        """The allocation ``params`` stand for, at the target size."""
        values = [params[s.name] for s in self.space.slots]
        if self.encoding == "levels":
            return self.space.from_levels([int(v) for v in values])
        return self.space.decode([float(v) for v in values], self.target)

    def config(self, params: dict[str, Any]) -> PruneConfig:
        """The PruneConfig of :meth:`decode`."""
        return self.space.to_config(self.decode(params))

    def params(self, allocation: Allocation) -> dict[str, Any] | None:
        """Parameters that decode to ``allocation`` (to evaluate it first), or None where the
        encoding cannot say it exactly (weights express uniform, not any allocation)."""
        if self.encoding == "levels":
            return self._levels(allocation)
        if allocation == self.space.at(self.target):
            return {s.name: 1.0 for s in self.space.slots}
        return None

    def mutate(
        self, params: dict[str, Any], space: dict[str, BaseDistribution], rng: random.Random
    ) -> dict[str, Any]:
        """A child of ``params`` (levels) with :attr:`swaps` levels switched between slots;
        the size stays within the tolerance of the target. ``space`` is not needed: the
        budget space knows every slot's bounds."""
        return self._levels(self.space.mutate(self.decode(params), self.target, rng, self.swaps))

    def _levels(self, allocation: Allocation) -> dict[str, int]:
        levels = self.space.levels_of(allocation)
        return {s.name: level for s, level in zip(self.space.slots, levels, strict=True)}
