"""The ledger: the one writer of trial records, for both backends and for baselines.

Every trial is recorded on the run's Optuna study: its objective values (the task's metric
on the search split, the size ratio) when it completed, and user attributes: its
``status``, ``kind`` (``search`` or a baseline's: ``uniform``, ``layer-uniform``, ``global``,
``uniform-sparsity``, ``owl``, ``block-influence``), the ``target`` of a baseline built for
one (a size, a sparsity or a fraction of the layers removed, as its kind says), the
``stage`` and ``fidelity`` it was evaluated at (today one stage, ``retrain``, whose fidelity
is the number of retraining steps), the PruneConfig, the metrics on both splits before and
after retraining, every size, the times, its rung points, and for a failure its reason. The
ledger also decides early stopping at rungs, keeps the retrained weights of front trials
(per kind) and logs progress.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.engine.measure import SizeUnit
from autoprune.engine.prune import PruneConfig
from autoprune.run.rundir import RunDir, write_atomically
from autoprune.run.screen import ScreenOutcome
from autoprune.run.trial import Stage, TrialOutcome
from autoprune.search.early_stopping import should_continue
from autoprune.search.levels import Heuristic
from autoprune.search.pareto import nondominated
from autoprune.search.spec import EarlyStoppingSpec
from autoprune.tasks.base import Task

Status = Literal["complete", "stopped", "failed", "outside_band", "invalid", "interrupted"]
Kind = Literal[
    "search", "uniform", "layer-uniform", "global", "uniform-sparsity", "owl", "block-influence"
]
KINDS: tuple[Kind, ...] = get_args(Kind)

Origin = Literal["screened", Heuristic]
"""Where a targeted search's finalist came from: its screening, or a heuristic's allocation."""
STATUS = "status"
KIND = "kind"
TARGET = "target"  # what a baseline was built for, where it was built for one (see its kind)
ORIGINS = "origins"  # where a targeted search's finalist came from (a list of Origin)
STAGE = "stage"
FIDELITY = "fidelity"
FAILURE = "failure"
CONFIG = "config"
RUNGS = "rung_points"  # {step: [search metric, size]} as early stopping saw them
# Statuses of trials that spent the budget: they ran (to the end, to a rung, or to an error).
SPENT: tuple[Status, ...] = ("complete", "stopped", "failed")

log = logging.getLogger("autoprune")


def status_of(trial: FrozenTrial) -> Status | None:
    """The recorded status; a trial that failed before anything was written is ``failed``."""
    status: Status | None = trial.user_attrs.get(STATUS)
    if status is None and trial.state == TrialState.FAIL:
        return "failed"  # failed before any attribute was written (a dead worker)
    return status


def _checkpoint_error_key(number: int) -> str:
    return f"checkpoint_error_{number}"


def checkpoint_error(study_attrs: dict[str, Any], number: int) -> str | None:
    """Why trial ``number``'s checkpoint could not be written, or None; ``study_attrs`` are
    the study's user attributes (read them once for many trials)."""
    reason: str | None = study_attrs.get(_checkpoint_error_key(number))
    return reason


def count_spent(study: optuna.Study) -> int:
    """Trials that count towards the budget: complete, stopped early, or failed running."""
    return sum(1 for t in study.get_trials(deepcopy=False) if status_of(t) in SPENT)


class Ledger:
    """Records the trials of one Optuna study of a run.

    Args:
        study: The run's ``search`` or ``baseline`` study.
        task: Says which way the metric goes (fronts and early stopping follow it).
        size_unit: The unit of the size objective (a key of the outcome's ratios).
        run: The run directory (where front checkpoints are kept).
        early_stopping: The study's successive-halving settings.
        budget: The trial budget, shown in progress lines (None: no trial budget).
    """

    def __init__(
        self,
        study: optuna.Study,
        *,
        task: Task,
        size_unit: SizeUnit,
        run: RunDir,
        early_stopping: EarlyStoppingSpec,
        budget: int | None = None,
    ) -> None:
        self.study = study
        self.task = task
        self.size_unit = size_unit
        self.run = run
        self.early_stopping = early_stopping
        self.budget = budget
        self._started = time.perf_counter()

    @property
    def name(self) -> str:
        """``search`` or ``baseline``."""
        return self.study.study_name.rsplit(".", 1)[-1]

    # -- writing ---------------------------------------------------------------------------

    def _trial(self, number: int) -> FrozenTrial:
        return self.study.get_trials(deepcopy=False)[number]  # numbers are list positions

    def note(self, number: int, attrs: dict[str, Any]) -> None:
        """Add attributes to unfinished trial ``number``, keeping the others."""
        trial = optuna.trial.Trial(self.study, self._trial(number)._trial_id)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def record_outcome(
        self,
        number: int,
        outcome: TrialOutcome,
        kind: Kind,
        write_checkpoint: Callable[[Path], object] | None = None,
    ) -> None:
        """Record a trial that ran: retrained to the end, its values go to the controller and
        its weights are kept if it is on its kind's front (``write_checkpoint(directory)``
        writes them); stopped at a rung, it is PRUNED, with no values, never on a front."""
        stopped = outcome.stopped_at is not None
        rungs = {
            step: [metric, outcome.ratios[self.size_unit]] for step, metric in outcome.rungs.items()
        }
        self.note(
            number,
            {
                **outcome.to_attrs(),
                RUNGS: rungs,
                KIND: kind,
                STATUS: "stopped" if stopped else "complete",
            },
        )
        if stopped:
            self.study.tell(number, state=TrialState.PRUNED)
            log.info(
                "%s trial %d stopped early at rung %d: %s %.4f at size %.3f",
                self.name,
                number,
                outcome.stopped_at,
                self.task.metric,
                outcome.metric_search,
                outcome.ratios[self.size_unit],
            )
            return
        self.study.tell(number, [outcome.metric_search, outcome.ratios[self.size_unit]])
        if write_checkpoint is not None:
            self.keep_checkpoint(number, kind, write_checkpoint)
        self._report(number, outcome, kind)

    def start(
        self, number: int, kind: Kind, config: PruneConfig, stage: Stage, fidelity: float
    ) -> None:
        """Note what trial ``number`` is before it runs: its kind, configuration, stage and
        fidelity, so that every record carries them, an interrupted one too."""
        attrs = {KIND: kind, CONFIG: config.to_dict(), STAGE: stage, FIDELITY: fidelity}
        self.note(number, attrs)

    def record_not_run(self, number: int, status: Status, reason: str) -> None:
        """Record that started trial ``number`` failed, fell outside the size band, was an
        invalid configuration, or was interrupted before it ran to the end."""
        self.note(number, {STATUS: status, FAILURE: reason})
        self.study.tell(number, state=TrialState.FAIL)
        if status == "failed":
            log.warning("%s trial %d failed: %s", self.name, number, reason)

    def record_screened(self, number: int, outcome: ScreenOutcome, survived: bool) -> None:
        """Record screened trial ``number`` of a screening study (one objective: the fitness,
        lower is better): a survivor of its generation's selection is complete with its
        fitness; one selected out is stopped at the step where it fell (PRUNED)."""
        status: Status = "complete" if survived else "stopped"
        self.note(number, {**outcome.to_attrs(), STATUS: status})
        if survived:
            self.study.tell(number, [outcome.fitness])
        else:
            self.study.tell(number, state=TrialState.PRUNED)

    def rung_decision(self, number: int, step: int, metric: float, size: float) -> bool:
        """Record that trial ``number`` reached rung ``step`` at (``metric``, ``size``);
        returns whether it continues (multi-objective successive halving over every trial
        that reached the rung, see :mod:`autoprune.search.early_stopping`)."""
        trial = self._trial(number)
        reached = {**trial.user_attrs.get(RUNGS, {}), str(step): [metric, size]}
        self.note(number, {RUNGS: reached})
        others = [(self.task.score(m), s) for m, s in self.rung_points(step, exclude=number)]
        stopping = self.early_stopping
        return should_continue(
            others, (self.task.score(metric), size), stopping.keep, stopping.min_trials
        )

    def keep_checkpoint(self, number: int, kind: Kind, write: Callable[[Path], object]) -> None:
        """Keep trial ``number``'s retrained weights if it is on ``kind``'s front, and delete
        the checkpoints of ``kind`` that the front no longer holds.

        A checkpoint that cannot be written (a full disk, say) leaves no partial directory:
        the trial stays recorded, the reason is noted (:func:`checkpoint_error` reads it), and
        export re-runs the trial from its configuration.
        """
        front = {t.number for t in self.front(kind)}
        if number in front:
            try:
                write_atomically(self.run.checkpoint(kind, number), write)
            except OSError as error:
                reason = f"{type(error).__name__}: {error}"
                # A finished trial's attributes cannot change: the note is the study's.
                self.study.set_user_attr(_checkpoint_error_key(number), reason)
                log.warning(
                    "%s trial %d: its checkpoint could not be written: %s; the trial is "
                    "recorded, and export will re-run it from its configuration",
                    self.name,
                    number,
                    reason,
                )
        for path in self.run.checkpoints.glob(f"{kind}_*"):
            number_text = path.name.rsplit("_", 1)[1]  # a ".partial" left by a kill goes too
            if not number_text.isdigit() or int(number_text) not in front:
                shutil.rmtree(path, ignore_errors=True)

    def recover_interrupted(self) -> int:
        """Mark trials left RUNNING by a driver that was killed as interrupted; returns how
        many. Interrupted trials do not count towards the budget."""
        stale = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in stale:
            self.note(
                trial.number,
                {STATUS: "interrupted", FAILURE: "the search driver stopped during the trial"},
            )
            self.study.tell(trial.number, state=TrialState.FAIL)
        if stale:
            log.info(
                "%s: %d trial(s) interrupted by an earlier stop, marked failed: %s",
                self.name,
                len(stale),
                [t.number for t in stale],
            )
        return len(stale)

    # -- reading ---------------------------------------------------------------------------

    def count_spent(self) -> int:
        """Trials that count towards the budget (see :func:`count_spent`)."""
        return count_spent(self.study)

    def rung_points(self, step: int, exclude: int) -> list[tuple[float, float]]:
        """``(metric, size)`` of every trial but ``exclude`` that reached rung ``step``."""
        points = []
        for trial in self.study.get_trials(deepcopy=False):
            reached = trial.user_attrs.get(RUNGS, {}).get(str(step))
            if reached is not None and trial.number != exclude:
                points.append((float(reached[0]), float(reached[1])))
        return points

    def front(self, kind: Kind) -> list[FrozenTrial]:
        """Complete trials of ``kind`` on the Pareto front of (search metric, size)."""
        trials = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(KIND) == kind
        ]
        points = [(self.task.score(t.values[0]), t.values[1]) for t in trials]
        return [t for t, keep in zip(trials, nondominated(points), strict=True) if keep]

    def _report(self, number: int, outcome: TrialOutcome, kind: Kind) -> None:
        """A progress line: trials done, this trial's numbers, its kind's front, the rate."""
        done = self.count_spent()
        front = sorted(self.front(kind), key=lambda t: t.values[1])
        front_text = ", ".join(f"{t.values[1]:.2f}:{t.values[0]:.3f}" for t in front[:8])
        log.info(
            "%s trial %d (%d%s done): %s %.4f search / %.4f test at size %.3f, %.0f s | "
            "front (size:metric) %s | %.0f s elapsed",
            kind,
            number,
            done,
            f"/{self.budget}" if self.budget else "",
            self.task.metric,
            outcome.metric_search,
            outcome.metric_test if outcome.metric_test is not None else float("nan"),
            outcome.ratios[self.size_unit],
            outcome.seconds["total"],
            front_text,
            time.perf_counter() - self._started,
        )
