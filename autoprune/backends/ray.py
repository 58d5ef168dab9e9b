"""The Ray backend: the same trials, run by Ray Tune on a local Ray or a Ray cluster.

Everything here adapts autoprune to Ray Tune; Tune does the scheduling, placement, retries
and concurrency:

- :class:`StudySearcher` is Ray's ``OptunaSearch`` driving the run's own Optuna study with
  the study's controller, asking only for configurations inside the size band and writing
  each finished trial's record (complete, stopped, failed) as the local backend does.
- :class:`RungScheduler` is a Tune scheduler for early stopping: at each rung it applies
  multi-objective successive halving to the rung records kept in the Optuna study.
- :class:`FrontCheckpoints` is a Tune callback that keeps the retrained weights of front
  trials in ``RUN/checkpoints`` (sent back through Tune's checkpoints) and reports progress.
- :func:`run_trial_on_worker` is the trainable: prepared work reaches it once, through
  Ray's object store (``tune.with_parameters``); it never reads the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from autoprune.engine.prune import PruneConfig
from autoprune.engine.serialize import save_pruned
from autoprune.run.ledger import (
    RUNGS,
    count_spent,
    record_rung,
    recover_interrupted,
    rung_points,
    set_attrs,
    tell_not_complete,
    tell_outcome,
)
from autoprune.run.prepare import Prepared
from autoprune.run.session import Session
from autoprune.run.trial import OutsideSizeBand, TrialOutcome, TrialSettings, run_trial
from autoprune.search.early_stopping import should_continue

log = logging.getLogger("autoprune")

METRIC, SIZE = "metric_search", "size"


def run_trial_on_worker(
    config: dict[str, Any], prepared: Prepared, settings: TrialSettings, threads: int
) -> None:
    """One trial on a Ray worker; reports rung results, then a final result with a checkpoint.

    A trial that raises is reported as failed with its reason (the search goes on); a worker
    that dies is Ray's to retry.
    """
    torch.set_num_threads(threads)
    prune_config = PruneConfig.from_dict(config["prune"], source=f"trial {config['number']}")

    def on_rung(step: int, metric: float, size: float) -> bool:
        tune.report({"stage": "rung", "step": step, METRIC: metric, SIZE: size})
        return True  # the scheduler stops this trial if it should not go on

    try:
        outcome, model = run_trial(
            prepared, prune_config, settings, on_rung if settings.rungs else None
        )
    except Exception as error:  # recorded as failed; OutsideSizeBand included
        status = "outside_band" if isinstance(error, OutsideSizeBand) else "failed"
        tune.report(
            {
                "stage": "final",
                "status": status,
                "failure": f"{type(error).__name__}: {error}",
                METRIC: float("nan"),  # Tune requires the searcher's metrics in every result
                SIZE: float("nan"),
            }
        )
        return
    final = {
        "stage": "final",
        "status": "complete",
        "outcome": json.dumps(outcome.to_dict()),
        METRIC: outcome.metric_search,
        SIZE: outcome.ratios[settings.size_unit],
    }
    with tempfile.TemporaryDirectory() as directory:
        save_pruned(model, directory, prepared.tokenizer)
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(directory))


class _LightPickle:
    """Tune pickles its searcher, scheduler and callbacks for its own experiment restore,
    which autoprune does not use (the Optuna study is the record; running the search again
    resumes it). Their pickles leave out the session, which holds the prepared model."""

    _HEAVY = frozenset(
        {"_session", "_study", "_ot_study", "_searcher", "_sampler", "_storage", "_ot_trials"}
    )

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._HEAVY}


class StudySearcher(_LightPickle, OptunaSearch):
    """``OptunaSearch`` over the run's search study, recording trials as autoprune does."""

    def __init__(self, session: Session) -> None:
        distributions = session.space.distributions()
        super().__init__(
            space=distributions,
            metric=[METRIC, SIZE],
            mode=["max", "min"],
            sampler=session.search.sampler,
            study_name=session.search.study_name,
            storage=session.search._storage,
        )
        self._study = session.search  # the very study the local backend would use
        self._ot_study = self._study  # type: ignore[assignment]  # Ray declares it None
        self._session = session
        self._distributions = distributions

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"study": self._study.study_name}))

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("resume an autoprune search by running it again")

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        trial, config = self._session.propose(self._study, self._distributions)
        self._ot_trials[trial_id] = trial
        return {"prune": config.to_dict(), "number": trial.number}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return  # Tune may report a completion twice; record it once
        self._completed_trials.add(trial_id)
        study, trial = self._study, self._ot_trials[trial_id]
        size_unit = self._session.settings.size_unit
        config = self._session.space.to_config(trial.params)
        if error or not result:
            tell_not_complete(
                study,
                trial,
                "failed",
                "the trial's Ray worker died, retries exhausted (backend.max_retries)",
                "search",
                {"config": config.to_dict()},
            )
        elif result.get("stage") == "rung":  # stopped by the scheduler at this rung
            tell_outcome(study, trial, self._stopped(trial, config, result), size_unit, "search")
        elif result.get("status") == "complete":
            outcome = TrialOutcome.from_dict(json.loads(result["outcome"]))
            tell_outcome(study, trial, outcome, size_unit, "search")
        else:
            tell_not_complete(
                study,
                trial,
                result.get("status", "failed"),
                result.get("failure", "unknown"),
                "search",
                {"config": config.to_dict()},
            )

    def _stopped(self, trial: Any, config: PruneConfig, result: dict[str, Any]) -> TrialOutcome:
        """The record of a trial stopped at the rung of ``result``: no test metric."""
        rungs = _rungs_of(self._study, trial.number)
        return TrialOutcome(
            config=config,
            ratios={self._session.settings.size_unit: float(result[SIZE])},
            size={},
            metric_search_before=float("nan"),
            metric_search=float(result[METRIC]),
            metric_test=None,
            retrain_steps=int(result["step"]),
            seconds={"total": float(result.get("time_total_s", 0.0))},
            rungs={step: point[0] for step, point in rungs.items()},
            stopped_at=int(result["step"]),
        )


class RungScheduler(_LightPickle, FIFOScheduler):
    """Multi-objective successive halving as a Tune scheduler (early stopping)."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if result.get("stage") != "rung":
            return TrialScheduler.CONTINUE
        study = self._session.search
        step, point = int(result["step"]), (float(result[METRIC]), float(result[SIZE]))
        number = trial.config["number"]
        reached = {**_rungs_of(study, number), str(step): list(point)}
        record_rung(study, _optuna_trial_id(study, number), reached)
        stopping = self._session.spec.early_stopping
        others = rung_points(study, step, exclude=number)
        keep = should_continue(others, point, stopping.keep, stopping.min_trials)
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP


def _optuna_trial_id(study: Any, number: int) -> int:
    return int(study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def _rungs_of(study: Any, number: int) -> dict[str, list[float]]:
    """The rung points recorded so far for trial ``number`` of ``study``."""
    trial = study._storage.get_trial(_optuna_trial_id(study, number))
    return dict(trial.user_attrs.get(RUNGS, {}))


class FrontCheckpoints(_LightPickle, tune.Callback):
    """Keeps front trials' retrained weights in the run directory and logs progress."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """A trial whose worker died is being retried: note it on the (running) trial."""
        study = self._session.search
        trial_id = _optuna_trial_id(study, trial.config["number"])
        set_attrs(study, trial_id, {"worker_failures": trial.run_metadata.num_failures})
        log.warning(
            "trial %d: its worker died; retrying (%d failure(s) so far)",
            trial.config["number"],
            trial.run_metadata.num_failures,
        )

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        number = trial.config["number"]
        study = self._session.search
        result = trial.last_result or {}
        checkpoint = trial.checkpoint
        if result.get("status") == "complete" and checkpoint is not None:
            outcome = TrialOutcome.from_dict(json.loads(result["outcome"]))
            with checkpoint.as_directory() as directory:
                self._session.keep_front_checkpoint(
                    study, number, lambda path: shutil.copytree(directory, path)
                )
            self._session.report(study, outcome, number)
            if Path(checkpoint.path).is_dir():
                shutil.rmtree(checkpoint.path, ignore_errors=True)  # kept or not, Tune's copy goes


def run_trials(session: Session) -> None:
    """Run the search's remaining trials with Ray Tune (a local Ray, or ``backend.address``)."""
    spec, backend = session.spec, session.spec.backend
    remaining = (
        spec.budget.trials - count_spent(session.search)
        if spec.budget.trials is not None
        else 1_000_000
    )
    if remaining <= 0:
        log.info("budget reached: %d trials", count_spent(session.search))
        return
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=backend.address, include_dashboard=False, log_to_driver=False)
    try:
        searcher = StudySearcher(session)
        device = "cuda" if backend.gpus_per_trial > 0 else "cpu"
        cpus = backend.cpus_per_trial or 1
        settings = dataclasses.replace(session.settings, device=device)
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial_on_worker,
                prepared=session.prepared,
                settings=settings,
                threads=max(1, int(cpus)),
            ),
            {"cpu": cpus, "gpu": backend.gpus_per_trial},
        )
        scheduler = RungScheduler(session) if spec.early_stopping.rungs else None
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=remaining,
                max_concurrent_trials=backend.concurrent_trials,
                time_budget_s=spec.budget.wall_time,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=backend.storage_path or str((session.run.path / "ray").resolve()),
                failure_config=tune.FailureConfig(max_failures=backend.max_retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[FrontCheckpoints(session)],
                verbose=0,
            ),
        )
        log.info(
            "ray: %d trial(s) to run, %d at a time, %g CPU and %g GPU each",
            remaining,
            backend.concurrent_trials,
            cpus,
            backend.gpus_per_trial,
        )
        tuner.fit()
        # A wall-time budget ends trials without telling the searcher: not lost, interrupted.
        recover_interrupted(session.search)
    finally:
        if started_here:
            ray.shutdown()
    log.info("ray: done, %d trials in the budget spent", count_spent(session.search))
