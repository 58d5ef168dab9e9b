"""A search, end to end: open the run, prepare once, run trials on a backend, add baselines.

:func:`run_search` is what ``autoprune search`` calls. Running it again on the same run
directory resumes: finished trials are kept, prepared work is read back, trials a killed
driver left running are marked interrupted, and the count goes on to the budget.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoprune.backends import run_trials
from autoprune.run.ledger import recover_interrupted
from autoprune.run.rundir import RunDir, RunLock, log_to_run
from autoprune.run.session import Session, baseline_configs, open_session, run_baseline_configs
from autoprune.search.spec import load_study


class SearchStopped(KeyboardInterrupt):
    """The user stopped the search (Ctrl-C); what ran is recorded and ``run`` resumes it.

    Attributes:
        run: The run directory: ``autoprune search RUN`` resumes the search.
    """

    def __init__(self, run: Path) -> None:
        super().__init__(f"the search in {run} was stopped")
        self.run = run


def run_search(
    study_file: str | Path,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Session:
    """Run (or resume) the search a study file describes; returns the open session.

    ``study_file`` may also be a run directory, which resumes it with its saved study.
    ``overrides`` set dotted keys of the study (``{"budget.trials": 40}``). The study's
    uniform baseline is trained after the search, in this process. Ctrl-C raises
    :class:`SearchStopped` (a ``KeyboardInterrupt``) naming the run directory.
    """
    path = Path(study_file)
    if path.is_dir():
        run = RunDir(path)
        spec = load_study(run.study_file, overrides)
    else:
        spec = load_study(path, overrides)
        run = RunDir(Path(out) if out is not None else Path("runs") / spec.name)
    with RunLock(run):
        handler = log_to_run(run, "search")
        try:
            session = open_session(spec, run)
            recover_interrupted(session.search)
            run_trials(session)
            if spec.baseline.ratios:
                run_baseline_configs(session, baseline_configs(session, spec.baseline.ratios))
        except KeyboardInterrupt:
            raise SearchStopped(run.path) from None
        finally:
            logging.getLogger("autoprune").removeHandler(handler)
    return session
