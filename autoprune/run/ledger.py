"""How trials are written to the Optuna study, the one record of every trial.

A finished trial carries its objective values (task metric on the search split, size ratio)
and user attributes: its ``status``, ``kind`` (``search``, ``uniform`` or ``layer-uniform``),
the PruneConfig, the metrics on both splits before and after retraining, every size, the
times, and for a failure its reason. Both backends write through these functions.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.engine.measure import SizeUnit
from autoprune.run.trial import TrialOutcome
from autoprune.search.pareto import nondominated

Status = Literal["complete", "stopped", "failed", "outside_band", "interrupted"]
Kind = Literal["search", "uniform", "layer-uniform"]

STATUS = "status"
KIND = "kind"
FAILURE = "failure"
RUNGS = "rung_points"  # {step: [search metric, size]} as early stopping saw them
# Statuses of trials that spent the budget: they ran (to the end, to a rung, or to an error).
SPENT: tuple[Status, ...] = ("complete", "stopped", "failed")

log = logging.getLogger("autoprune")


def outcome_attrs(
    outcome: TrialOutcome, size_unit: SizeUnit, kind: Kind, status: Status
) -> dict[str, Any]:
    """The user attributes of a trial that ran to the end (or was stopped early)."""
    size = outcome.ratios[size_unit]
    rungs = {step: [metric, size] for step, metric in outcome.rungs.items()}
    return {**outcome.to_attrs(), RUNGS: rungs, KIND: kind, STATUS: status}


def set_attrs(study: optuna.Study, trial_id: int, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(trial_id, key, value)


def tell_outcome(
    study: optuna.Study,
    trial: optuna.trial.Trial,
    outcome: TrialOutcome,
    size_unit: SizeUnit,
    kind: Kind,
) -> None:
    """Record a trial that ran: fully retrained, its values go to the controller; stopped
    early, it is PRUNED, with no values, and never on the front."""
    stopped = outcome.stopped_at is not None
    set_attrs(
        study,
        trial._trial_id,
        outcome_attrs(outcome, size_unit, kind, "stopped" if stopped else "complete"),
    )
    if stopped:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, list(outcome.values(size_unit)))


def record_rung(study: optuna.Study, trial_id: int, rungs: dict[str, list[float]]) -> None:
    """Write a running trial's rung results, ``{step: [metric, size]}``, as it reaches them."""
    study._storage.set_trial_user_attr(trial_id, RUNGS, rungs)


def rung_points(study: optuna.Study, step: int, exclude: int) -> list[tuple[float, float]]:
    """``(metric, size)`` of every trial but ``exclude`` that reached rung ``step``."""
    points = []
    for trial in study.get_trials(deepcopy=False):
        reached = trial.user_attrs.get(RUNGS, {}).get(str(step))
        if reached is not None and trial.number != exclude:
            points.append((float(reached[0]), float(reached[1])))
    return points


def tell_not_complete(
    study: optuna.Study,
    trial: optuna.trial.Trial,
    status: Status,
    reason: str,
    kind: Kind,
    extra: dict[str, Any] | None = None,
) -> None:
    """Record a trial that failed, fell outside the size band or was interrupted."""
    set_attrs(
        study, trial._trial_id, {**(extra or {}), KIND: kind, STATUS: status, FAILURE: reason}
    )
    study.tell(trial, state=TrialState.FAIL)


def status_of(trial: FrozenTrial) -> Status | None:
    status: Status | None = trial.user_attrs.get(STATUS)
    if status is None and trial.state == TrialState.FAIL:
        return "failed"  # failed before any attribute was written (a dead worker)
    return status


def count_spent(study: optuna.Study) -> int:
    """Trials that count towards the budget: complete, stopped early, or failed while running."""
    return sum(1 for t in study.get_trials(deepcopy=False) if status_of(t) in SPENT)


def recover_interrupted(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a driver that was killed as interrupted; returns how many.

    Interrupted trials do not count towards the budget: the search runs others in their place.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        set_attrs(
            study,
            trial._trial_id,
            {STATUS: "interrupted", FAILURE: "the search driver stopped during the trial"},
        )
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    if stale:
        log.info(
            "%s: %d trial(s) interrupted by an earlier stop, marked failed: %s",
            study.study_name,
            len(stale),
            [t.number for t in stale],
        )
    return len(stale)


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials on the Pareto front of (search metric, size)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    points = [(t.values[0], t.values[1]) for t in trials]
    return [t for t, keep in zip(trials, nondominated(points), strict=True) if keep]


def _checkpoint_error_key(number: int) -> str:
    return f"checkpoint_error_{number}"


def record_checkpoint_error(study: optuna.Study, number: int, reason: str) -> None:
    """Note that complete trial ``number``'s retrained model could not be kept, and why.

    A finished trial's attributes cannot change, so the note is a study user attribute.
    """
    study.set_user_attr(_checkpoint_error_key(number), reason)


def checkpoint_error(study_attrs: dict[str, Any], number: int) -> str | None:
    """Why trial ``number``'s checkpoint could not be written, or None; ``study_attrs`` are
    the study's user attributes (read them once for many trials)."""
    reason: str | None = study_attrs.get(_checkpoint_error_key(number))
    return reason
