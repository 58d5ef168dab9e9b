"""A reinforcement-learning controller, written as an Optuna sampler.

The policy is factorized over the decisions of the search space, one action per decision (as
the controllers of AMC, He et al. 2018, and of NAS with reinforcement learning, Zoph & Le
2017, choose one action per layer), and conditioned on a preference vector drawn afresh for
each trial (an "episode"): decision ``d`` is a Gaussian over its range, with mean
``sigmoid(theta_d @ weights)``, as AMC's continuous action per layer. The reward is
the augmented Chebyshev scalarization of the trial's normalized objectives under that
preference, so trials with different preferences aim at different parts of the Pareto front
(as in MOEA/D, Zhang & Li 2007). The policy is trained by REINFORCE (Williams 1992) with a
baseline: the reward of earlier trials of similar preference.

State that spans trials is in the study's storage: each trial's preference is a trial
system attribute, and the policy is rebuilt by replaying the finished trials in order. So
the sampler works across processes (Ray Tune workers, a resumed search) unchanged; the
instance holds its configuration and a lazily created random state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna import Study
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

_WEIGHTS_KEY = "PolicyGradientSampler:weights"
_FLOAT_BINS = 11


def _choices(distribution: BaseDistribution) -> int:
    """How many discrete actions a distribution offers."""
    if isinstance(distribution, CategoricalDistribution):
        return len(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return (distribution.high - distribution.low) // distribution.step + 1
    if isinstance(distribution, FloatDistribution):
        if distribution.step is None:
            return _FLOAT_BINS
        return int(round((distribution.high - distribution.low) / distribution.step)) + 1
    raise ValueError(f"PolicyGradientSampler cannot sample {type(distribution).__name__}")


def _to_value(distribution: BaseDistribution, index: int) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[index]
    if isinstance(distribution, IntDistribution):
        return distribution.low + index * distribution.step
    if isinstance(distribution, FloatDistribution):
        step = distribution.step or (distribution.high - distribution.low) / (_FLOAT_BINS - 1)
        return min(distribution.high, distribution.low + index * step)
    raise ValueError(f"PolicyGradientSampler cannot sample {type(distribution).__name__}")


def _to_index(distribution: BaseDistribution, value: Any) -> int:
    if isinstance(distribution, CategoricalDistribution):
        return int(distribution.to_internal_repr(value))
    if isinstance(distribution, IntDistribution):
        return (int(value) - distribution.low) // distribution.step
    if isinstance(distribution, FloatDistribution):
        step = distribution.step or (distribution.high - distribution.low) / (_FLOAT_BINS - 1)
        return int(round((value - distribution.low) / step)) if step > 0 else 0
    raise ValueError(f"PolicyGradientSampler cannot sample {type(distribution).__name__}")


class _Policy:
    """Per decision, a Gaussian over the decision's range [0, 1]; trained by replayed REINFORCE.

    The mean of decision ``d`` is ``sigmoid(theta_d @ weights)``, so the preference moves it;
    a sample is clipped to [0, 1] and rounded to the nearest action, so neighbouring actions
    share what is learned. Integer and stepped-float decisions are ordered by nature;
    categorical choices are taken in the order the search space lists them.
    """

    def __init__(self, n_objectives: int, sigma: float) -> None:
        self.n_objectives = n_objectives
        self.sigma = sigma
        self.theta: dict[str, np.ndarray] = {}  # name -> (n_objectives,)

    def mean(self, name: str, weights: np.ndarray) -> float:
        theta = self.theta.setdefault(name, np.zeros(self.n_objectives))
        return float(1.0 / (1.0 + np.exp(-(theta @ weights))))

    def sample(self, name: str, actions: int, weights: np.ndarray, rng: np.random.RandomState):
        position = float(np.clip(rng.normal(self.mean(name, weights), self.sigma), 0.0, 1.0))
        return int(round(position * (actions - 1)))

    def update(
        self,
        actions: dict[str, tuple[int, int]],
        weights: np.ndarray,
        advantage: float,
        learning_rate: float,
    ) -> None:
        for name, (index, count) in actions.items():
            position = index / max(count - 1, 1)
            mu = self.mean(name, weights)
            # d log N(position; mu, sigma) / d theta = (position - mu) / sigma^2 * mu (1 - mu) w
            gradient = (position - mu) / self.sigma**2 * mu * (1.0 - mu) * weights
            self.theta[name] += learning_rate * advantage * gradient


class PolicyGradientSampler(BaseSampler):
    """Multi-objective REINFORCE over the search space's decisions.

    Args:
        seed: Seed of the random state (preferences and actions).
        learning_rate: Step size of the policy-gradient updates (advantages are normalized).
        epsilon: Share of uniform exploration mixed into every decision's distribution.
        baseline_width: Width of the preference kernel that forms each trial's baseline.
        augmentation: Weight of the sum term in the augmented Chebyshev reward.
        sigma: Standard deviation of every decision's Gaussian, on its range scaled to [0, 1].
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        learning_rate: float = 1.0,
        epsilon: float = 0.05,
        baseline_width: float = 0.15,
        augmentation: float = 0.05,
        sigma: float = 0.3,
    ) -> None:
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        if baseline_width <= 0:
            raise ValueError(f"baseline_width must be positive, got {baseline_width}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self._seed = seed
        self._learning_rate = learning_rate
        self._epsilon = epsilon
        self._baseline_width = baseline_width
        self._augmentation = augmentation
        self._sigma = sigma
        self._rng: np.random.RandomState | None = None
        self._replay: _Replay | None = None
        self._current: tuple[int, _Policy] | None = None  # (trial id, its policy)

    # -- the BaseSampler interface ---------------------------------------------------------

    def reseed_rng(self) -> None:
        self._rng = np.random.RandomState()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}  # every decision is sampled independently given the trial's preference

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        weights = self._random().dirichlet(np.ones(len(study.directions)))
        study._storage.set_trial_system_attr(trial._trial_id, _WEIGHTS_KEY, weights.tolist())

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        weights = np.asarray(
            study._storage.get_trial_system_attrs(trial._trial_id).get(_WEIGHTS_KEY)
            or np.full(len(study.directions), 1.0 / len(study.directions))
        )
        actions = _choices(param_distribution)
        rng = self._random()
        if rng.uniform() < self._epsilon:
            index = int(rng.randint(actions))
        else:
            index = self._policy_for(study, trial).sample(param_name, actions, weights, rng)
        return _to_value(param_distribution, index)

    def _policy_for(self, study: Study, trial: FrozenTrial) -> _Policy:
        """The policy for ``trial``, brought up to date once per trial, not once per decision."""
        if self._current is None or self._current[0] != trial._trial_id:
            self._current = (trial._trial_id, self._policy(study))
        return self._current[1]

    # -- learning from the study's history --------------------------------------------------

    def _random(self) -> np.random.RandomState:
        if self._rng is None:
            self._rng = np.random.RandomState(self._seed)
        return self._rng

    def _policy(self, study: Study) -> _Policy:
        """The policy after replaying every finished trial of ``study`` in trial order.

        Rewards are normalized by the objectives' range over all finished trials. Replay is
        incremental: when the finished trials extend those replayed before and the range is
        unchanged (the usual case), only the new ones are replayed.
        """
        trials = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if _WEIGHTS_KEY in t.system_attrs and t.values is not None
        ]
        signs = np.array([1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in study.directions])
        goodness = np.array([t.values for t in trials], dtype=float).reshape(-1, len(signs))
        goodness = goodness * signs  # (trials, objectives), higher is better
        low = goodness.min(axis=0) if trials else np.zeros(len(signs))
        high = goodness.max(axis=0) if trials else np.zeros(len(signs))
        numbers = [t.number for t in trials]
        replay = self._replay
        if (
            replay is None
            or numbers[: len(replay.numbers)] != replay.numbers
            or not np.array_equal(replay.low, low)
            or not np.array_equal(replay.high, high)
        ):
            replay = self._replay = _Replay(_Policy(len(signs), self._sigma), low, high)
        for index in range(len(replay.numbers), len(trials)):
            self._learn(replay, trials[index], goodness[index])
        return replay.policy

    def _learn(self, replay: _Replay, trial: FrozenTrial, goodness: np.ndarray) -> None:
        """One REINFORCE step on ``trial``, whose objectives are ``goodness`` (higher better)."""
        weights = np.asarray(trial.system_attrs[_WEIGHTS_KEY])
        span = np.where(replay.high > replay.low, replay.high - replay.low, 1.0)
        regret = 1.0 - (goodness - replay.low) / span  # 0 at the best value seen
        weighted = weights * regret
        reward = -float(weighted.max() + self._augmentation * weighted.sum())
        if replay.history:
            kernel = np.array(
                [
                    np.exp(-np.sum((w - weights) ** 2) / (2 * self._baseline_width**2))
                    for w, _ in replay.history
                ]
            )
            earlier = np.array([r for _, r in replay.history])
            baseline = float((kernel * earlier).sum() / max(kernel.sum(), 1e-12))
            scale = float(np.std([*earlier, reward]))
            actions = {
                name: (_to_index(dist, trial.params[name]), _choices(dist))
                for name, dist in trial.distributions.items()
            }
            advantage = (reward - baseline) / max(scale, 1e-8)
            replay.policy.update(actions, weights, advantage, self._learning_rate)
        replay.history.append((weights, reward))
        replay.numbers.append(trial.number)


class _Replay:
    """The policy, what it has learned from (in trial order) and the range it normalized by."""

    def __init__(self, policy: _Policy, low: np.ndarray, high: np.ndarray) -> None:
        self.policy = policy
        self.low = low
        self.high = high
        self.numbers: list[int] = []
        self.history: list[tuple[np.ndarray, float]] = []
