"""The local backend: Optuna in this process, one trial after another."""

from __future__ import annotations

import logging
import time

from autoprune.records import count_spent
from autoprune.study import Session, evaluate_and_record

log = logging.getLogger("autoprune")

# Give up when the controller proposes this many configurations outside the size band in a
# row: the band is reachable (checked at start) but the controller is not finding it.
MAX_OUTSIDE_BAND_IN_A_ROW = 200


def run_trials(session: Session) -> None:
    """Ask the controller for configurations and run them until the budget is spent.

    The budget is ``budget.trials`` trials in all (those of earlier invocations count) and
    ``budget.wall_time`` seconds for this invocation. Trials outside the size band cost no
    training and do not count.
    """
    budget = session.spec.budget
    started = time.perf_counter()
    distributions = session.space.distributions()
    outside_in_a_row = 0
    while True:
        spent = count_spent(session.search)
        if budget.trials is not None and spent >= budget.trials:
            log.info("budget reached: %d trials", spent)
            return
        if budget.wall_time is not None and time.perf_counter() - started >= budget.wall_time:
            log.info("wall time reached: %.0f s, %d trials", budget.wall_time, spent)
            return
        trial = session.search.ask(distributions)
        config = session.space.to_config(trial.params)
        outcome = evaluate_and_record(session, session.search, trial, config, "search")
        if outcome is None and count_spent(session.search) == spent:
            outside_in_a_row += 1
            if outside_in_a_row >= MAX_OUTSIDE_BAND_IN_A_ROW:
                raise RuntimeError(
                    f"the controller proposed {outside_in_a_row} configurations in a row outside "
                    f"the size band; widen objectives.min_size/max_size or the search space"
                )
        else:
            outside_in_a_row = 0
