"""The local backend: Optuna in this process, one trial after another."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from autoprune.engine.prune import PruneConfig
from autoprune.run.execute import execute
from autoprune.run.propose import Proposer
from autoprune.run.screen import Screener, ScreenOutcome
from autoprune.run.session import Session

log = logging.getLogger("autoprune")


def run_trials(session: Session) -> None:
    """Ask the controller for configurations and run them until the budget is spent.

    The budget is ``budget.trials`` trials in all (those of earlier invocations count) and
    ``budget.wall_time`` seconds for this invocation. ``backend.cpus_per_trial``, when set,
    is the number of torch threads.
    """
    budget = session.spec.budget
    cpus = session.spec.backend.cpus_per_trial
    if cpus is not None:
        torch.set_num_threads(max(1, int(cpus)))
    started = time.perf_counter()
    ledger = session.search
    proposer = Proposer(
        ledger, session.space, session.sizes, session.spec.objectives, session.settings
    )
    while True:
        spent = ledger.count_spent()
        if budget.trials is not None and spent >= budget.trials:
            log.info("budget reached: %d trials", spent)
            return
        if budget.wall_time is not None and time.perf_counter() - started >= budget.wall_time:
            log.info("wall time reached: %.0f s, %d trials", budget.wall_time, spent)
            return
        trial, config = proposer.propose()
        execute(session.prepared, session.settings, ledger, trial.number, config, "search")


class LocalExecutor:
    """A targeted search's work in this process (an
    :class:`~autoprune.strategies.executor.Executor`): one :class:`Screener` for every
    screening, and retraining one trial after another."""

    def __init__(self, session: Session) -> None:
        screening = session.spec.screening
        self.session = session
        self.screener = Screener.of_study(session.prepared, screening, session.settings.device)

    @property
    def examples(self) -> int:
        """How many examples the screening split holds."""
        return self.screener.examples

    def screen(self, configs: Sequence[PruneConfig], examples: slice) -> list[ScreenOutcome]:
        """Each of ``configs`` screened on ``examples``, one after another, in order."""
        return self.screener.screen(configs, examples)

    def retrain(self, jobs: Sequence[tuple[PruneConfig, dict[str, Any]]]) -> None:
        """Retrain and record each configuration of ``jobs`` as a new search trial noted
        with its attributes."""
        session, search = self.session, self.session.search
        for config, attrs in jobs:
            number = search.study.ask().number
            search.note(number, attrs)
            execute(session.prepared, session.settings, search, number, config, "search")
