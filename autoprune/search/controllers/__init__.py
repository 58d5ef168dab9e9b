"""Controllers: Optuna samplers that propose pruning configurations, in one registry.

Every controller is an Optuna sampler, so it runs the same in process and under Ray Tune.
Optuna's own samplers are wrapped, not copied: ``tpe`` and ``gp`` (Bayesian), ``nsga2`` and
``nsga3`` (evolutionary), ``random`` (the control); ``rl`` and ``evo`` are ours
(:class:`~autoprune.search.controllers.rl.PolicyGradientSampler`,
:class:`~autoprune.search.controllers.evo.EvolutionarySampler`). Each registered
controller declares its options as a pydantic model, so a study file's
``controller.options`` are validated before any work, with errors naming the key.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import optuna
from optuna.samplers import (
    BaseSampler,
    GPSampler,
    NSGAIIISampler,
    NSGAIISampler,
    RandomSampler,
    TPESampler,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autoprune.errors import AutopruneError
from autoprune.search.controllers.evo import EvolutionarySampler, Mutation
from autoprune.search.controllers.rl import PolicyGradientSampler
from autoprune.search.levels import Heuristic

ControllerName = Literal["tpe", "gp", "nsga2", "nsga3", "rl", "random", "evo"]


class ControllerOptionsError(AutopruneError, ValueError):
    """``controller.options`` that the named controller does not take."""


class ControllerOptions(BaseModel):
    """The options of a controller that takes none; the base of every options model."""

    model_config = ConfigDict(extra="forbid")


class StartupOptions(ControllerOptions):
    """TPE and GP: random trials before the objectives are modelled."""

    n_startup_trials: int | None = Field(
        default=None, ge=1, description="default: a fifth of the trial budget, in [4, 10]"
    )


class TPEOptions(StartupOptions):
    multivariate: bool = True


class NSGAOptions(ControllerOptions):
    """NSGA-II and NSGA-III: generation size and variation."""

    population_size: int | None = Field(
        default=None, ge=2, description="default: a fifth of the trial budget, in [8, 50]"
    )
    crossover_prob: float = Field(default=0.9, ge=0, le=1)
    mutation_prob: float | None = Field(default=None, ge=0, le=1)


class RLOptions(ControllerOptions):
    """The policy-gradient controller's settings (see :class:`PolicyGradientSampler`)."""

    learning_rate: float = Field(default=1.0, gt=0)
    epsilon: float = Field(default=0.05, ge=0, lt=1)
    baseline_width: float = Field(default=0.15, gt=0)
    augmentation: float = Field(default=0.05, ge=0)
    sigma: float = Field(default=0.3, gt=0)


class EvoOptions(ControllerOptions):
    """The elitist evolution's settings (see :class:`EvolutionarySampler`)."""

    swaps: int = Field(default=2, ge=1, description="levels moved per child")
    starts: list[Heuristic] | None = Field(
        default=None,
        description="allocations evaluated first, at each target (a targeted search); "
        "default: uniform and the search space's heuristic (global, owl or block-influence)",
    )


Builder = Callable[[Any, int, int | None, Mutation | None], BaseSampler]
"""``build(options, seed, budget, mutation)``: a controller's seeded sampler."""


def population_size(budget: int | None) -> int:
    """NSGA's generation size: a fifth of the trial budget, within [8, 50] (Optuna's default)."""
    return 50 if budget is None else min(50, max(8, budget // 5))


def startup_trials(budget: int | None) -> int:
    """Random trials before TPE or GP model the objectives: a fifth of the budget, in [4, 10]
    (Optuna's default is 10)."""
    return 10 if budget is None else min(10, max(4, budget // 5))


def _tpe(
    options: TPEOptions, seed: int, budget: int | None, mutation: Mutation | None
) -> BaseSampler:
    startup = options.n_startup_trials or startup_trials(budget)
    return TPESampler(seed=seed, multivariate=options.multivariate, n_startup_trials=startup)


def _gp(
    options: StartupOptions, seed: int, budget: int | None, mutation: Mutation | None
) -> BaseSampler:
    return GPSampler(seed=seed, n_startup_trials=options.n_startup_trials or startup_trials(budget))


class _PicklesWithoutLock:
    """Pickles a genetic sampler without the thread lock it holds (Optuna 5.1's
    ``BaseGASampler._thread_lock``, which pickle refuses) and gives the copy a new lock, so
    the sampler can be shipped and checkpointed (Ray Tune) as before."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if "_thread_lock" in state:
            state["_thread_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_thread_lock" in state:
            self._thread_lock = threading.Lock()


class _NSGAII(_PicklesWithoutLock, NSGAIISampler):
    """Optuna's NSGA-II, picklable."""


class _NSGAIII(_PicklesWithoutLock, NSGAIIISampler):
    """Optuna's NSGA-III, picklable."""


def _nsga(sampler: type[_NSGAII] | type[_NSGAIII]) -> Builder:
    """The builder of NSGA-II or NSGA-III (experimental in Optuna; we accept that)."""

    def build(
        options: NSGAOptions, seed: int, budget: int | None, mutation: Mutation | None
    ) -> BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return sampler(
                seed=seed,
                population_size=options.population_size or population_size(budget),
                crossover_prob=options.crossover_prob,
                mutation_prob=options.mutation_prob,
            )

    return build


def _rl(
    options: RLOptions, seed: int, budget: int | None, mutation: Mutation | None
) -> BaseSampler:
    return PolicyGradientSampler(seed=seed, **options.model_dump())


def _random(
    options: ControllerOptions, seed: int, budget: int | None, mutation: Mutation | None
) -> BaseSampler:
    return RandomSampler(seed=seed)


def _evo(
    options: EvoOptions, seed: int, budget: int | None, mutation: Mutation | None
) -> BaseSampler:
    return EvolutionarySampler(seed=seed, swaps=options.swaps, mutation=mutation)


@dataclass(frozen=True)
class Controller:
    """A registered controller: its options model and how to build its sampler.

    Attributes:
        options: The pydantic model of ``controller.options`` for this controller.
        build: ``build(options, seed, budget, mutation)``, a seeded sampler; ``budget``
            (trials, or None) sizes defaults such as a random start or a generation;
            ``mutation``, where given, is how an evolutionary controller makes a child (the
            budget-preserving level switch of a targeted search).
    """

    options: type[ControllerOptions]
    build: Builder


REGISTRY: dict[ControllerName, Controller] = {
    "tpe": Controller(TPEOptions, _tpe),
    "gp": Controller(StartupOptions, _gp),
    "nsga2": Controller(NSGAOptions, _nsga(_NSGAII)),
    "nsga3": Controller(NSGAOptions, _nsga(_NSGAIII)),
    "rl": Controller(RLOptions, _rl),
    "random": Controller(ControllerOptions, _random),
    "evo": Controller(EvoOptions, _evo),
}
CONTROLLERS: tuple[ControllerName, ...] = get_args(ControllerName)


def validate_options(name: ControllerName, options: Mapping[str, Any]) -> ControllerOptions:
    """``options`` checked against controller ``name``'s model; raises
    :class:`ControllerOptionsError` naming each bad key and what it allows."""
    if name not in REGISTRY:
        raise ControllerOptionsError(
            f"unknown controller {name!r}; choose one of {', '.join(CONTROLLERS)}"
        )
    model = REGISTRY[name].options
    try:
        return model.model_validate(dict(options))
    except ValidationError as error:
        allowed = ", ".join(model.model_fields) or "none"
        problems = "; ".join(
            f"options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise ControllerOptionsError(
            f"controller {name!r}: {problems} (options allowed: {allowed})"
        ) from None


def make_sampler(
    name: ControllerName,
    seed: int,
    budget: int | None = None,
    options: Mapping[str, Any] | None = None,
    mutation: Mutation | None = None,
) -> BaseSampler:
    """The controller called ``name`` with ``options``, seeded; ``budget`` (trials) sizes the
    random start of TPE and GP and the generations of NSGA-II and NSGA-III by default;
    ``mutation`` is the evolutionary controller's way of making a child."""
    validated = validate_options(name, options or {})
    return REGISTRY[name].build(validated, seed, budget, mutation)


__all__ = [
    "CONTROLLERS",
    "REGISTRY",
    "Controller",
    "ControllerName",
    "EvolutionarySampler",
    "ControllerOptionsError",
    "PolicyGradientSampler",
    "make_sampler",
    "population_size",
    "startup_trials",
    "validate_options",
]
