"""The Ray backend: the same trials, run by Ray Tune on a local Ray or a Ray cluster.

Everything here adapts autoprune to Ray's public API; Ray does the scheduling, placement,
retries and concurrency, and the run's ledgers, in the driver, record every trial as the
local backend's do:

- :class:`StudySearcher` is a Tune ``Searcher`` over the run's search study: it hands Tune
  the trials that a proposer starts (the study's controller inside the size band, or a
  targeted search's finalists) and every finished trial's result to the ledger.
- :class:`RungScheduler` is a Tune scheduler for early stopping: at each rung it asks the
  ledger, which applies multi-objective successive halving.
- :class:`FrontCheckpoints` is a Tune callback that hands the retrained weights of a
  finished trial (sent back through Tune's checkpoints) to the ledger, which keeps them if
  the trial is on the front.
- :func:`run_trial_on_worker` is the trainable: prepared work reaches it once, through
  Ray's object store (``tune.with_parameters``); it never reads the run directory.
- :class:`RayExecutor` runs a targeted search: its screening on :class:`ScreeningWorker`
  actors, a batch of candidates per remote call, with the same prepared work in the object
  store; its finalists as Tune trials, like the free search's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import optuna
import ray
import torch
from ray import tune
from ray.actor import ActorHandle
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.util import ActorPool

from autoprune.engine.prune import PruneConfig
from autoprune.engine.serialize import save_pruned
from autoprune.run.ledger import Ledger
from autoprune.run.prepare import Prepared
from autoprune.run.propose import Proposer
from autoprune.run.screen import Screener, ScreenOutcome, screening_split
from autoprune.run.session import Session
from autoprune.run.trial import TrialOutcome, TrialSettings, run_trial
from autoprune.search.spec import BackendSpec, ScreeningSpec

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
    resumes it). Their pickles leave out the ledger and the proposer, which hold the
    storage and, through the session, the prepared model."""

    _HEAVY = frozenset({"_ledger", "_propose"})

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._HEAVY}


Propose = Callable[[], tuple[optuna.trial.Trial, PruneConfig]]
"""A new trial of the search study, started in its ledger, and its configuration."""


class StudySearcher(_LightPickle, Searcher):
    """A Tune searcher over the run's search study: Tune runs what ``propose`` starts, and
    ``ledger`` records what Tune reports.

    Completion is idempotent: a Tune trial reported complete twice is recorded once.
    """

    def __init__(self, ledger: Ledger, propose: Propose) -> None:
        super().__init__()
        self._ledger = ledger
        self._propose = propose
        self._numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._completed: set[str] = set()

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        trial, config = self._propose()
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


@contextmanager
def connected(backend: BackendSpec) -> Iterator[None]:
    """Ray for the block: one already connected is used as it is; otherwise the driver
    connects to ``backend.address`` (or starts a local Ray) and disconnects after."""
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=backend.address, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def _worker_settings(session: Session) -> tuple[TrialSettings, float]:
    """The trials' settings on a worker (CUDA where it is given a GPU) and its CPUs."""
    backend = session.spec.backend
    device = "cuda" if backend.gpus_per_trial > 0 else "cpu"
    return dataclasses.replace(session.settings, device=device), backend.cpus_per_trial or 1


def _tune(
    session: Session,
    prepared: ray.ObjectRef,
    searcher: StudySearcher,
    trials: int,
    wall_time: float | None,
) -> None:
    """Run ``trials`` trials that ``searcher`` hands out with Ray Tune, on the connected Ray,
    ``prepared`` (the session's prepared work in the object store) reaching every worker."""
    spec, backend = session.spec, session.spec.backend
    settings, cpus = _worker_settings(session)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial_on_worker,
            prepared=prepared,
            settings=settings,
            threads=max(1, int(cpus)),
        ),
        {"cpu": cpus, "gpu": backend.gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=RungScheduler(session) if spec.early_stopping.rungs else None,
            num_samples=trials,
            max_concurrent_trials=backend.concurrent_trials,
            time_budget_s=wall_time,
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
        trials,
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


def run_trials(session: Session) -> None:
    """Run the search's remaining trials with Ray Tune (a local Ray, or ``backend.address``)."""
    spec = session.spec
    spent = session.search.count_spent()
    remaining = spec.budget.trials - spent if spec.budget.trials is not None else 1_000_000
    if remaining <= 0:
        log.info("budget reached: %d trials", spent)
        return
    proposer = Proposer(
        session.search, session.space, session.sizes, spec.objectives, session.settings
    )
    with connected(spec.backend):
        searcher = StudySearcher(session.search, proposer.propose)
        _tune(session, ray.put(session.prepared), searcher, remaining, spec.budget.wall_time)
    log.info("ray: done, %d trials in the budget spent", session.search.count_spent())


class ScreeningWorker:
    """A Ray actor holding a :class:`Screener` between calls, so the dense model's outputs
    on a slice are computed once per worker."""

    def __init__(
        self, prepared: Prepared, screening: ScreeningSpec, device: str, threads: int
    ) -> None:
        torch.set_num_threads(threads)
        self.screener = Screener.of_study(prepared, screening, device)

    def screen(self, configs: list[PruneConfig], examples: slice) -> list[ScreenOutcome]:
        """Each of ``configs`` screened on ``examples``, in order."""
        return self.screener.screen(configs, examples)


class RayExecutor:
    """A targeted search's work on the connected Ray (an
    :class:`~autoprune.strategies.executor.Executor`).

    Screening runs on ``backend.concurrent_trials`` :class:`ScreeningWorker` actors of
    ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs, started at the first screening and
    kept until retraining. A list of candidates goes out in batches, one remote call each:
    by default one batch per worker, so a call's overhead (milliseconds) is spread over many
    candidates. Outcomes come back in the candidates' order, so selection keeps what it
    keeps in process. Finalists are retrained as Tune trials, as the free search's trials,
    once the screening workers have given back their resources. The prepared work goes to
    the object store once, for both.

    Args:
        session: The open run; its ledgers, in this process, record everything.
        batch: Candidates per remote call at most (default: one batch per worker).

    Attributes:
        screenings: Candidates screened since the workers started (one per slice).
        calls: Remote calls that screened them.

    Raises:
        ValueError: If the screening settings do not fit the prepared work, or ``batch`` is
            below 1.
    """

    def __init__(self, session: Session, *, batch: int | None = None) -> None:
        if batch is not None and batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        screening = session.spec.screening
        self.session = session
        self.batch = batch
        self.examples = len(
            screening_split(session.prepared, screening.fitness, screening.recovery_examples)
        )
        self._prepared = ray.put(session.prepared)
        self._workers: list[ActorHandle] = []
        self.screenings = self.calls = 0

    def _start_workers(self) -> None:
        backend = self.session.spec.backend
        settings, cpus = _worker_settings(self.session)
        worker = ray.remote(ScreeningWorker).options(
            num_cpus=cpus,
            num_gpus=backend.gpus_per_trial,
            max_restarts=backend.max_retries,
            max_task_retries=backend.max_retries,
        )
        screening, threads = self.session.spec.screening, max(1, int(cpus))
        self._workers = [  # Ray types an actor's .remote() as a handle or the class itself
            cast(ActorHandle, worker.remote(self._prepared, screening, settings.device, threads))
            for _ in range(backend.concurrent_trials)
        ]

    def screen(self, configs: Sequence[PruneConfig], examples: slice) -> list[ScreenOutcome]:
        """Each of ``configs`` screened on ``examples`` by the workers, in batches; outcomes
        in the order of ``configs``."""
        if not configs:
            return []
        if not self._workers:
            self._start_workers()
        size = self.batch or -(-len(configs) // len(self._workers))
        batches = [list(configs[i : i + size]) for i in range(0, len(configs), size)]
        pool = ActorPool(self._workers)
        done = pool.map(lambda worker, batch: worker.screen.remote(batch, examples), batches)
        outcomes = [outcome for batch in done for outcome in batch]
        self.screenings += len(configs)
        self.calls += len(batches)
        return outcomes

    def retrain(self, jobs: Sequence[tuple[PruneConfig, dict[str, Any]]]) -> None:
        """Retrain the configurations of ``jobs`` as Tune trials of the search study, each
        noted with its attributes when Tune starts it, and recorded by the search ledger."""
        self.release()
        if not jobs:
            return
        search, settings = self.session.search, self.session.settings
        queue = iter(jobs)

        def propose() -> tuple[optuna.trial.Trial, PruneConfig]:
            config, attrs = next(queue)
            trial = search.study.ask()
            search.note(trial.number, attrs)
            search.start(trial.number, "search", config, settings.stage, settings.fidelity)
            return trial, config

        _tune(self.session, self._prepared, StudySearcher(search, propose), len(jobs), None)

    def release(self) -> None:
        """End the screening workers, giving their CPUs and GPUs back to Ray; the next
        screening starts them anew."""
        if self._workers:
            log.info(
                "ray: %d screening(s) in %d remote call(s) on %d worker(s)",
                self.screenings,
                self.calls,
                len(self._workers),
            )
        for worker in self._workers:
            ray.kill(worker)
        self._workers, self.screenings, self.calls = [], 0, 0


@contextmanager
def executor(session: Session) -> Iterator[RayExecutor]:
    """A :class:`RayExecutor` on the study's Ray for the block; its workers are released
    when the block ends."""
    with connected(session.spec.backend):
        found = RayExecutor(session)
        try:
            yield found
        finally:
            found.release()
