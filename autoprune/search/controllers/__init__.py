"""Controllers: Optuna samplers that propose pruning configurations.

Optuna's own samplers are wrapped, not copied: ``tpe`` and ``gp`` (Bayesian), ``nsga2`` and
``nsga3`` (evolutionary), ``random`` (the control); ``rl`` is ours
(:class:`~autoprune.search.controllers.rl.PolicyGradientSampler`). Every controller is an Optuna
sampler, so it runs the same in process and under Ray Tune's ``OptunaSearch``.
"""

from __future__ import annotations

import warnings
from typing import get_args

import optuna
from optuna.samplers import (
    BaseSampler,
    GPSampler,
    NSGAIIISampler,
    NSGAIISampler,
    RandomSampler,
    TPESampler,
)

from autoprune.search.controllers.rl import PolicyGradientSampler
from autoprune.search.spec import ControllerName

CONTROLLERS: tuple[ControllerName, ...] = get_args(ControllerName)


def population_size(budget: int | None) -> int:
    """NSGA's generation size: a fifth of the trial budget, within [8, 50] (Optuna's default)."""
    return 50 if budget is None else min(50, max(8, budget // 5))


def startup_trials(budget: int | None) -> int:
    """Random trials before TPE or GP model the objectives: a fifth of the budget, in [4, 10]
    (Optuna's default is 10)."""
    return 10 if budget is None else min(10, max(4, budget // 5))


def make_sampler(name: ControllerName, seed: int, budget: int | None = None) -> BaseSampler:
    """The controller called ``name``, seeded; ``budget`` (trials) sizes the random start of
    TPE and GP and the generations of NSGA-II and NSGA-III."""
    if name == "tpe":
        return TPESampler(seed=seed, multivariate=True, n_startup_trials=startup_trials(budget))
    if name == "gp":
        return GPSampler(seed=seed, n_startup_trials=startup_trials(budget))
    if name == "nsga2":
        return NSGAIISampler(seed=seed, population_size=population_size(budget))
    if name == "nsga3":
        with warnings.catch_warnings():  # experimental in Optuna; we accept that
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return NSGAIIISampler(seed=seed, population_size=population_size(budget))
    if name == "rl":
        return PolicyGradientSampler(seed=seed)
    if name == "random":
        return RandomSampler(seed=seed)
    raise ValueError(f"unknown controller {name!r}; choose one of {', '.join(CONTROLLERS)}")


__all__ = [
    "CONTROLLERS",
    "PolicyGradientSampler",
    "make_sampler",
    "population_size",
    "startup_trials",
]
