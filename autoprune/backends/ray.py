"""The Ray backend: the same trials, run by Ray Tune on a local Ray or a Ray cluster.

Everything here adapts autoprune to Ray Tune's public API; Tune does the scheduling,
placement, retries and concurrency, and the run's ledger records every trial as the local
backend's does:

- :class:`StudySearcher` is a Tune ``Searcher`` over the run's own Optuna study: it asks
  the proposer (the study's controller, inside the size band) and hands every finished
  trial's result to the ledger.
- :class:`RungScheduler` is a Tune scheduler for early stopping: at each rung it asks the
  ledger, which applies multi-objective successive halving.
- :class:`FrontCheckpoints` is a Tune callback that hands the retrained weights of a
  finished trial (sent back through Tune's checkpoints) to the ledger, which keeps them if
  the trial is on the front.
- :func:`run_trial_on_worker` is the trainable: prepared work reaches it once, through
  Ray's object store (``tune.with_parameters``); it never reads the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from autoprune.engine.prune import PruneConfig
from autoprune.engine.serialize import save_pruned
from autoprune.run.ledger import Ledger
from autoprune.run.prepare import Prepared
from autoprune.run.propose import Proposer
from autoprune.run.session import Session
from autoprune.run.trial import TrialOutcome, TrialSettings, run_trial

log = logging.getLogger("autoprune")

METRIC, SIZE = "metric_search", "size"


def run_trial_on_worker(
    config: dict[str, Any], prepared: Prepared, settings: TrialSettings, threads: int
) -> None:
    """One trial on a Ray worker; reports each rung's outcome so far, then a final result
    with a checkpoint.

    A trial that raises is reported as failed with its reason (the search goes on); a worker
    that dies is Ray's to retry.
    """
    torch.set_num_threads(threads)
    prune_config = PruneConfig.from_dict(config["prune"], source=f"trial {config['number']}")

    def on_rung(step: int, outcome: TrialOutcome) -> bool:
        tune.report(
            {
                "stage": "rung",
                "step": step,
                "outcome": json.dumps(outcome.to_dict()),
                METRIC: outcome.metric_search,
                SIZE: outcome.ratios[settings.size_unit],
            }
        )
        return True  # the scheduler stops this trial if it should not go on

    try:
        outcome, model = run_trial(
            prepared, prune_config, settings, on_rung if settings.rungs else None
        )
    except Exception as error:  # recorded as failed, with the reason
        tune.report(
            {
                "stage": "final",
                "status": "failed",
                "failure": f"{type(error).__name__}: {error}",
                METRIC: float("nan"),
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
    resumes it). Their pickles leave out the session and the ledger, which hold the
    prepared model and the storage."""

    _HEAVY = frozenset({"_session", "_ledger", "_proposer"})

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._HEAVY}


class StudySearcher(_LightPickle, Searcher):
    """A Tune searcher over the run's search study; the ledger records what Tune reports.

    Completion is idempotent: a Tune trial reported complete twice is recorded once.
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._ledger: Ledger = session.search
        self._proposer = Proposer(
            session.search, session.space, session.sizes, session.spec.objectives, session.settings
        )
        self._numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._completed: set[str] = set()

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        trial, config = self._proposer.propose()
        self._numbers[trial_id] = trial.number
        return {"prune": config.to_dict(), "number": trial.number}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed or trial_id not in self._numbers:
            return
        self._completed.add(trial_id)
        number = self._numbers[trial_id]
        if error or not result:
            reason = "the trial's Ray worker died, retries exhausted (backend.max_retries)"
            self._ledger.record_not_run(number, "failed", reason)
        elif "outcome" in result:  # complete, or stopped by the scheduler at a rung
            outcome = TrialOutcome.from_dict(json.loads(result["outcome"]))
            self._ledger.record_outcome(number, outcome, "search")
        else:
            reason = result.get("failure", "unknown")
            self._ledger.record_not_run(number, "failed", reason)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"study": self._ledger.study.study_name}))

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("resume an autoprune search by running it again")


class RungScheduler(_LightPickle, FIFOScheduler):
    """Multi-objective successive halving as a Tune scheduler (early stopping)."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._ledger: Ledger = session.search

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if result.get("stage") != "rung":
            return TrialScheduler.CONTINUE
        number, step = int(trial.config["number"]), int(result["step"])
        goes_on = self._ledger.rung_decision(
            number, step, float(result[METRIC]), float(result[SIZE])
        )
        return TrialScheduler.CONTINUE if goes_on else TrialScheduler.STOP


class FrontCheckpoints(_LightPickle, tune.Callback):
    """Hands finished trials' retrained weights to the ledger; notes worker failures."""

    def __init__(self, session: Session) -> None:
        self._ledger: Ledger = session.search

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """A trial whose worker died is being retried: note it on the (running) trial."""
        number, failures = int(trial.config["number"]), trial.run_metadata.num_failures
        self._ledger.note(number, {"worker_failures": failures})
        log.warning("trial %d: its worker died; retrying (%d failure(s) so far)", number, failures)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        result, checkpoint = trial.last_result or {}, trial.checkpoint
        if result.get("status") != "complete" or checkpoint is None:
            return
        with checkpoint.as_directory() as directory:
            self._ledger.keep_checkpoint(
                int(trial.config["number"]), "search", lambda path: shutil.copytree(directory, path)
            )
        if Path(checkpoint.path).is_dir():
            shutil.rmtree(checkpoint.path, ignore_errors=True)  # kept or not, Tune's copy goes


def run_trials(session: Session) -> None:
    """Run the search's remaining trials with Ray Tune (a local Ray, or ``backend.address``)."""
    spec, backend = session.spec, session.spec.backend
    spent = session.search.count_spent()
    remaining = spec.budget.trials - spent if spec.budget.trials is not None else 1_000_000
    if remaining <= 0:
        log.info("budget reached: %d trials", spent)
        return
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=backend.address, include_dashboard=False, log_to_driver=False)
    try:
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
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=StudySearcher(session),
                scheduler=RungScheduler(session) if spec.early_stopping.rungs else None,
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
        # Tune's own SIGINT handler would end fit() quietly: let Ctrl-C reach the caller,
        # which reports how to resume, as the local backend does.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        tuner.fit()
        # A wall-time budget ends trials without telling the searcher: not lost, interrupted.
        session.search.recover_interrupted()
    finally:
        if started_here:
            ray.shutdown()
    log.info("ray: done, %d trials in the budget spent", session.search.count_spent())
