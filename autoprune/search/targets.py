"""A controller's parameters as an allocation of exactly a target size.

A targeted search explores, for each target size, only allocations of that size, in the
budget space its search space file asks for (:func:`budget_space`): heads and neurons
(:class:`~autoprune.search.budget.BudgetSpace`), per-layer sparsity
(:class:`~autoprune.search.budget_sparsity.SparsityBudget`) or kept layers
(:class:`~autoprune.search.budget_depth.DepthBudget`). Every controller proposes Optuna
parameters, one per slot of the space, named as search spaces name them (``heads_3``,
``ffn_3``, ``sparsity_3``, ``layers_3``):

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

from autoprune.engine.measure import SizeModel, SizeUnit
from autoprune.engine.prune import PruneConfig
from autoprune.search.budget import BudgetSpace
from autoprune.search.budget_depth import DepthBudget
from autoprune.search.budget_sparsity import SparsityBudget, sparsity_grid
from autoprune.search.levels import BudgetError, LevelSpace
from autoprune.search.space import SearchSpaceSpec

Encoding = Literal["levels", "weights"]
AnySpace = LevelSpace[Any, Any]


def budget_space(space: SearchSpaceSpec, sizes: SizeModel, unit: SizeUnit) -> AnySpace:
    """The budget space a targeted search over ``space``'s dimensions explores: heads and
    neurons for ``heads`` and ``ffn`` (their ranges and steps are the budget space's own:
    cost-equal levels), per-layer sparsity on ``sparsity``'s grid, or kept layers for
    ``layers``.

    Raises:
        BudgetError: If ``space`` mixes sparsity or layers with another dimension, or
            ``unit`` does not fit the space (``nonzero`` is for sparsity only).
    """
    structured = space.heads is not None or space.ffn is not None
    kinds = [
        name
        for name, present in (
            ("heads/ffn", structured),
            ("sparsity", space.sparsity is not None),
            ("layers", space.layers is not None),
        )
        if present
    ]
    if len(kinds) != 1:
        raise BudgetError(
            f"a targeted search allocates one kind of unit at a time; the search space names "
            f"{' and '.join(kinds)}: keep heads/ffn, sparsity or layers"
        )
    if space.sparsity is not None:
        dim = space.sparsity
        grid = sparsity_grid(dim.min, dim.max, dim.step or 0.05)
        return SparsityBudget(sizes, unit, grid)
    if space.layers is not None:
        return DepthBudget(sizes, unit)
    return BudgetSpace(sizes, unit)


class TargetEncoding:
    """Parameters <-> allocations of one target size.

    Args:
        space: The budget space of the dense model (an allocation is whatever it holds).
        target: The size, a ratio to the dense model in the space's unit.
        encoding: ``levels`` or ``weights`` (see the module's docstring).
        swaps: Levels switched per child by :meth:`mutate`.

    Every allocation :meth:`decode` returns is within ``space.tolerance`` of ``target``.
    """

    def __init__(self, space: AnySpace, target: float, encoding: Encoding, swaps: int = 2) -> None:
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

    def decode(self, params: dict[str, Any]) -> Any:
        """The allocation ``params`` stand for, at the target size."""
        values = [params[s.name] for s in self.space.slots]
        if self.encoding == "levels":
            return self.space.from_levels([int(v) for v in values])
        return self.space.decode([float(v) for v in values], self.target)

    def config(self, params: dict[str, Any]) -> PruneConfig:
        """The PruneConfig of :meth:`decode`."""
        return self.space.to_config(self.decode(params))

    def params(self, allocation: Any) -> dict[str, Any] | None:
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

    def _levels(self, allocation: Any) -> dict[str, int]:
        levels = self.space.levels_of(allocation)
        return {s.name: level for s, level in zip(self.space.slots, levels, strict=True)}
