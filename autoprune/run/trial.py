"""One trial: prune a copy of the dense model, retrain it briefly, evaluate it, measure it.

A trial reads only its PruneConfig and the prepared work, so it runs the same in the
driver's process and on a Ray worker. Its outcome is a plain record, written to the Optuna
trial by whoever runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.measure import SizeUnit, measure
from autoprune.engine.prune import PruneConfig, prune
from autoprune.run.prepare import Prepared
from autoprune.search.spec import RetrainSpec, StudySpec
from autoprune.tasks.train import Recipe, evaluate, train

SIZE_UNITS: tuple[SizeUnit, ...] = get_args(SizeUnit)


class OutsideSizeBand(Exception):
    """The configuration's size is outside the study's band; no training was spent on it."""

    def __init__(self, ratio: float, unit: SizeUnit, band: tuple[float | None, float | None]):
        low = "0" if band[0] is None else f"{band[0]:g}"
        high = "1" if band[1] is None else f"{band[1]:g}"
        super().__init__(f"size {ratio:.3f} ({unit}) is outside the band [{low}, {high}]")
        self.ratio = ratio


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a study shares besides the prepared work."""

    retrain: RetrainSpec
    size_unit: SizeUnit
    min_size: float | None
    max_size: float | None
    seq_len: int
    device: str
    rungs: tuple[int, ...] = ()

    @classmethod
    def from_spec(cls, spec: StudySpec, device: torch.device) -> TrialSettings:
        return cls(
            retrain=spec.retrain,
            size_unit=spec.objectives.size,
            min_size=spec.objectives.min_size,
            max_size=spec.objectives.max_size,
            seq_len=spec.max_length,
            device=str(device),
            rungs=tuple(spec.early_stopping.rungs),
        )

    @property
    def band(self) -> tuple[float | None, float | None]:
        return self.min_size, self.max_size

    def in_band(self, ratio: float) -> bool:
        low_ok = self.min_size is None or ratio >= self.min_size
        return low_ok and (self.max_size is None or ratio <= self.max_size)


@dataclass
class TrialOutcome:
    """What a trial measured.

    Attributes:
        config: The PruneConfig tried.
        ratios: Size as a fraction of the dense model, in every unit.
        size: Absolute size in every unit.
        metric_search_before: Task metric on the search split before retraining.
        metric_search: After retraining, on the search split (what the controller sees); for
            a trial stopped early, at its last rung.
        metric_test: After retraining, on the test split (never given to the controller);
            None for a trial stopped early.
        retrain_steps: Retraining steps taken.
        seconds: Time spent pruning, retraining, evaluating, and in all.
        rungs: The search metric at each rung reached, by step.
        stopped_at: The rung where early stopping ended the trial, or None.
    """

    config: PruneConfig
    ratios: dict[str, float]
    size: dict[str, int]
    metric_search_before: float
    metric_search: float
    metric_test: float | None
    retrain_steps: int
    seconds: dict[str, float]
    rungs: dict[str, float] = field(default_factory=dict)
    stopped_at: int | None = None

    def values(self, size_unit: SizeUnit) -> tuple[float, float]:
        """The objective values: (task metric on search, size ratio)."""
        return self.metric_search, self.ratios[size_unit]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` reads it back."""
        return {**asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialOutcome:
        return cls(**{**data, "config": PruneConfig.from_dict(data["config"])})

    def to_attrs(self) -> dict[str, Any]:
        """Flat JSON-ready attributes for an Optuna trial."""
        attrs = self.to_dict()
        del attrs["rungs"]  # written as rung points, with the size, by the recorder
        for unit, ratio in attrs.pop("ratios").items():
            attrs[f"ratio_{unit}"] = ratio
        return attrs


def _prune_within_band(
    prepared: Prepared, config: PruneConfig, settings: TrialSettings
) -> tuple[PreTrainedModel, dict[str, float], dict[str, int]]:
    """Prune and measure; raise :class:`OutsideSizeBand` before any training is spent."""
    model = prune(prepared.model, config, prepared.scores)
    size = measure(model, settings.seq_len)
    ratios: dict[str, float] = {u: size.ratio(prepared.dense.size, u) for u in SIZE_UNITS}
    if not settings.in_band(ratios[settings.size_unit]):
        raise OutsideSizeBand(ratios[settings.size_unit], settings.size_unit, settings.band)
    return model, ratios, size.to_dict()


def run_trial(
    prepared: Prepared,
    config: PruneConfig,
    settings: TrialSettings,
    on_rung: Callable[[int, float, float], bool] | None = None,
) -> tuple[TrialOutcome, PreTrainedModel]:
    """Prune, retrain with distillation, evaluate and measure one configuration.

    With ``on_rung``, at each of ``settings.rungs`` the search metric is measured and
    ``on_rung(step, metric, size_ratio)`` decides whether retraining goes on; a trial it
    stops is not evaluated on the test split. Returns the outcome and the model (CPU).
    """
    started = time.perf_counter()
    model, ratios, size = _prune_within_band(prepared, config, settings)
    pruned_at = time.perf_counter()
    device = torch.device(settings.device)
    nn.Module.to(model, device)
    task = prepared.task
    before = evaluate(model, task.search, task.metric)
    evaluated_at = time.perf_counter()
    retrain = settings.retrain
    recipe = Recipe(
        steps=retrain.steps,
        batch_size=retrain.batch_size,
        lr=retrain.lr,
        temperature=retrain.temperature,
        distill_weight=retrain.distill_weight,
        seed=retrain.seed,
    )
    size_ratio = ratios[settings.size_unit]
    rungs: dict[str, float] = {}
    stopped_at: list[int] = []

    def at_step(step: int) -> bool:
        if on_rung is None or step not in settings.rungs:
            return True
        rungs[str(step)] = evaluate(model, task.search, task.metric)
        if on_rung(step, rungs[str(step)], size_ratio):
            return True
        stopped_at.append(step)
        return False

    steps = train(
        model, prepared.retrain_data, recipe, prepared.teacher_logits, at_step, desc="retrain"
    )
    retrained_at = time.perf_counter()
    if stopped_at:
        metric_search, metric_test = rungs[str(stopped_at[0])], None
    else:
        metric_search = evaluate(model, task.search, task.metric) if steps else before
        metric_test = evaluate(model, task.test, task.metric)
    finished = time.perf_counter()
    outcome = TrialOutcome(
        config=config,
        ratios=ratios,
        size=size,
        metric_search_before=before,
        metric_search=metric_search,
        metric_test=metric_test,
        retrain_steps=steps,
        seconds={
            "prune": pruned_at - started,
            "retrain": retrained_at - evaluated_at,
            "evaluate": (evaluated_at - pruned_at) + (finished - retrained_at),
            "total": finished - started,
        },
        rungs=rungs,
        stopped_at=stopped_at[0] if stopped_at else None,
    )
    return outcome, model.cpu()
