"""An elitist evolutionary controller, written as an Optuna sampler.

(1 + lambda) evolution as EvoPress runs it (Sieberling et al. 2024, "EvoPress: Towards
Optimal Dynamic Model Compression via Evolutionary Search"): every new trial is a mutation
of the best trial so far, so the best fitness never gets worse. A *mutation* is pluggable:
for a search at a target size it is the budget-preserving level switch (a few levels moved
between layers, the size unchanged; :class:`autoprune.search.targets.TargetEncoding`),
otherwise a step to a neighbouring value of a few parameters. With two objectives the
parent is drawn from the current Pareto front (a simple multi-objective evolution), so the
sampler also serves a free-size search.

State that spans trials is the study itself: the parent is read from its finished trials,
so the sampler works across processes unchanged; the instance holds its configuration and
a lazily created random state. Its first trials come from the study's enqueued trials (the
starts: the uniform allocation and the budget space's heuristics); without any finished or
enqueued trial it samples independently at random.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from optuna import Study
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

Params = dict[str, Any]
Mutation = Callable[[Params, dict[str, BaseDistribution], random.Random], Params]
"""``mutation(parent params, their distributions, rng)``: the child's params."""


class NeighbourMutation:
    """Moves ``swaps`` random parameters one step up or down (within their bounds), or to
    another choice of a categorical one."""

    def __init__(self, swaps: int) -> None:
        self.swaps = swaps

    def __call__(
        self, params: Params, space: dict[str, BaseDistribution], rng: random.Random
    ) -> Params:
        child = dict(params)
        for name in rng.sample(sorted(space), min(self.swaps, len(space))):
            child[name] = _neighbour(space[name], child[name], rng)
        return child


def _neighbour(distribution: BaseDistribution, value: Any, rng: random.Random) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return rng.choice(distribution.choices)
    if isinstance(distribution, IntDistribution | FloatDistribution):
        step = distribution.step or (distribution.high - distribution.low) / 10
        moved = value + rng.choice((-1, 1)) * step
        return type(value)(min(distribution.high, max(distribution.low, moved)))
    raise ValueError(f"EvolutionarySampler cannot mutate {type(distribution).__name__}")


class EvolutionarySampler(BaseSampler):
    """(1 + lambda) elitist evolution: each trial mutates the best trial so far.

    Args:
        seed: Seed of the random state.
        swaps: Mutation steps per child of the default mutation (ignored with ``mutation``).
        mutation: How a child is made from its parent's params (default: neighbour steps).
    """

    def __init__(
        self, *, seed: int | None = None, swaps: int = 2, mutation: Mutation | None = None
    ) -> None:
        if swaps < 1:
            raise ValueError(f"swaps must be at least 1, got {swaps}")
        self._seed = seed
        self._mutation = mutation or NeighbourMutation(swaps)
        self._rng: random.Random | None = None
        self._fallback = RandomSampler(seed=seed)
        self._space = IntersectionSearchSpace()

    def reseed_rng(self) -> None:
        self._rng = random.Random()
        self._fallback.reseed_rng()

    def _random(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random(self._seed)
        return self._rng

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._space.calculate(study)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        parent = self._parent(study)
        if parent is None or not search_space:
            return {}
        params = {name: parent.params[name] for name in search_space}
        return self._mutation(params, search_space, self._random())

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def _parent(self, study: Study) -> FrozenTrial | None:
        """The best complete trial (one objective), or a random one of the front (two)."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            return None
        if len(study.directions) == 1:
            return study.best_trial
        return self._random().choice(study.best_trials)
