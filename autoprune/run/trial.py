"""One trial: prune a copy of the dense model, retrain it briefly, evaluate it, measure it.

A trial reads only its PruneConfig and the prepared work, so it runs the same in the
driver's process and on a Ray worker. Its outcome is a plain record, which the ledger
writes to the Optuna study.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.measure import SizeUnit, measure
from autoprune.engine.prune import PruneConfig, prune
from autoprune.engine.recovery import Calibration, recover
from autoprune.run.prepare import Prepared
from autoprune.search.spec import RetrainSpec, StudyError, StudySpec
from autoprune.tasks.base import model_inputs
from autoprune.tasks.train import Recipe, train

SIZE_UNITS: tuple[SizeUnit, ...] = get_args(SizeUnit)
Stage = Literal["retrain", "screen"]
"""How a candidate is evaluated: ``retrain`` (pruned, retrained with distillation for
``fidelity`` steps, evaluated on both splits; :func:`run_trial`) or ``screen`` (pruned, maybe
refit, scored retrain-free on ``fidelity`` calibration examples;
:func:`autoprune.run.screen.screen_candidate`)."""


def flat_attrs(record: dict[str, Any]) -> dict[str, Any]:
    """An outcome's :meth:`to_dict` with its ``ratios`` spread into ``ratio_<unit>`` keys, as
    Optuna trial attributes."""
    attrs = dict(record)
    for unit, ratio in attrs.pop("ratios").items():
        attrs[f"ratio_{unit}"] = ratio
    return attrs


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a study shares besides the prepared work."""

    retrain: RetrainSpec
    size_unit: SizeUnit
    seq_len: int
    device: str
    rungs: tuple[int, ...] = ()
    stage: Stage = "retrain"

    @classmethod
    def from_spec(cls, spec: StudySpec, device: torch.device) -> TrialSettings:
        return cls(
            retrain=spec.retrain,
            size_unit=spec.objectives.size,
            seq_len=spec.max_length,
            device=str(device),
            rungs=tuple(spec.early_stopping.rungs),
        )

    @property
    def fidelity(self) -> float:
        """The stage's fidelity: retraining steps."""
        return float(self.retrain.steps)


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
        seconds: Time spent pruning (and refitting), retraining, evaluating, and in all.
        stage: How the candidate was evaluated.
        fidelity: The stage's fidelity (retraining steps planned).
        rungs: The search metric at each rung reached, by step.
        stopped_at: The rung where early stopping ended the trial, or None.
        test_outputs: The task's per-example outputs on the test split
            (:meth:`~autoprune.tasks.Task.example_outputs`: a number or a row per example),
            from which paired comparisons between trials are computed; None where
            ``metric_test`` is.
        search_outputs: The same on the search split, from which ``metric_search`` is
            computed (what a targeted search's choice compares, paired); None where
            ``metric_test`` is.
    """

    config: PruneConfig
    ratios: dict[str, float]
    size: dict[str, int]
    metric_search_before: float
    metric_search: float
    metric_test: float | None
    retrain_steps: int
    seconds: dict[str, float]
    stage: Stage = "retrain"
    fidelity: float = 0.0
    rungs: dict[str, float] = field(default_factory=dict)
    stopped_at: int | None = None
    test_outputs: list[Any] | None = None
    search_outputs: list[Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` reads it back."""
        return {**asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialOutcome:
        return cls(**{**data, "config": PruneConfig.from_dict(data["config"])})

    def to_attrs(self) -> dict[str, Any]:
        """Flat JSON-ready attributes for an Optuna trial (rungs are the ledger's to write)."""
        attrs = flat_attrs(self.to_dict())
        del attrs["rungs"]
        return attrs


def check_recovery_examples(prepared: Prepared, examples: int) -> None:
    """Raises StudyError, naming ``retrain.recovery_examples``, unless ``examples`` is in
    ``[0, len(prepared.retrain_data)]``."""
    available = len(prepared.retrain_data)
    if not 0 <= examples <= available:
        raise StudyError(
            f"retrain.recovery_examples: must be between 0 and {available} (the retraining "
            f"examples), got {examples}"
        )


def retrain_calibration(prepared: Prepared, examples: int) -> Calibration:
    """The dense model's block outputs on the first ``examples`` retraining examples, which
    a pruned model is refit to before retraining (``retrain.recovery_examples``).

    Raises:
        StudyError: If ``examples`` is out of range (:func:`check_recovery_examples`).
        ValueError: If ``examples`` is 0 (nothing to fit).
    """
    check_recovery_examples(prepared, examples)
    batches = prepared.retrain_data.subset(slice(0, examples)).batches(32)
    return Calibration.record(prepared.model, [model_inputs(b) for b in batches])


RungCallback = Callable[[int, TrialOutcome], bool]
"""``on_rung(step, outcome so far)``: whether retraining goes on past rung ``step``."""


def run_trial(
    prepared: Prepared,
    config: PruneConfig,
    settings: TrialSettings,
    on_rung: RungCallback | None = None,
) -> tuple[TrialOutcome, PreTrainedModel]:
    """Prune, refit (with ``retrain.recovery_examples``), retrain with distillation,
    evaluate and measure one configuration.

    With ``on_rung``, at each of ``settings.rungs`` the search metric is measured and
    ``on_rung(step, outcome)`` (the outcome as it would be recorded if the trial stopped
    there) decides whether retraining goes on; a trial it stops is not evaluated on the test
    split. Returns the outcome and the model (CPU).
    """
    started = time.perf_counter()
    model = prune(prepared.model, config, prepared.scores)
    if settings.retrain.recovery_examples:
        calibration = retrain_calibration(prepared, settings.retrain.recovery_examples)
        recover(model, calibration, kept=config.kept_layers())
    size = measure(model, settings.seq_len)
    ratios: dict[str, float] = {u: size.ratio(prepared.dense.size, u) for u in SIZE_UNITS}
    pruned_at = time.perf_counter()
    device = torch.device(settings.device)
    nn.Module.to(model, device)
    task, data = prepared.task, prepared.data
    before_outputs = task.example_outputs(model, data.search)
    before = task.metric_of(before_outputs, data.search)
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
    outcome = TrialOutcome(
        config=config,
        ratios=ratios,
        size=size.to_dict(),
        metric_search_before=before,
        metric_search=before,
        metric_test=None,
        retrain_steps=0,
        seconds={},
        stage=settings.stage,
        fidelity=settings.fidelity,
    )

    def seconds(retrained_at: float, finished: float) -> dict[str, float]:
        return {
            "prune": pruned_at - started,
            "retrain": retrained_at - evaluated_at,
            "evaluate": (evaluated_at - pruned_at) + (finished - retrained_at),
            "total": finished - started,
        }

    def at_step(step: int) -> bool:
        if on_rung is None or step not in settings.rungs:
            return True
        metric = task.evaluate(model, data.search)
        outcome.rungs[str(step)] = metric
        now = time.perf_counter()
        snapshot = replace(
            outcome,
            metric_search=metric,
            retrain_steps=step,
            seconds=seconds(now, now),
            rungs=dict(outcome.rungs),
            stopped_at=step,
        )
        if on_rung(step, snapshot):
            return True
        outcome.stopped_at = step
        return False

    teacher = prepared.teacher
    steps = train(model, prepared.retrain_data, recipe, task, teacher, at_step, desc="retrain")
    retrained_at = time.perf_counter()
    outcome.retrain_steps = steps
    if outcome.stopped_at is not None:
        outcome.metric_search = outcome.rungs[str(outcome.stopped_at)]
    else:
        search_outputs = task.example_outputs(model, data.search) if steps else before_outputs
        outcome.metric_search = task.metric_of(search_outputs, data.search)
        outcome.search_outputs = search_outputs.tolist()
        test_outputs = task.example_outputs(model, data.test)
        outcome.metric_test = task.metric_of(test_outputs, data.test)
        outcome.test_outputs = test_outputs.tolist()
    outcome.seconds = seconds(retrained_at, time.perf_counter())
    return outcome, model.cpu()
