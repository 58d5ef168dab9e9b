"""The run facade: what the ``autoprune`` command, the benchmarks and Python users call.

:func:`run_search` runs or resumes the search a study file describes (and the study's
uniform baseline); :func:`run_baselines` trains baseline configurations into a run. Both
open the run the same way: resolve the study (a file, or the run directory's own saved
study), lock the directory, log to it, open the session and mark trials a killed driver
left running as interrupted. Running either again on the same run directory resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autoprune.backends import executor, run_trials
from autoprune.run.baselines import TargetKind, baseline_configs, train_baselines
from autoprune.run.propose import Proposer
from autoprune.run.rundir import RunDir, RunLock, log_to_run
from autoprune.run.session import Session, open_session
from autoprune.search.spec import StudyError, load_study
from autoprune.strategies.targeted import TargetedSearch


class SearchStopped(KeyboardInterrupt):
    """The user stopped the work (Ctrl-C); what ran is recorded and ``run`` resumes it.

    Attributes:
        run: The run directory: ``autoprune search RUN`` resumes the search.
    """

    def __init__(self, run: Path) -> None:
        super().__init__(f"the search in {run} was stopped")
        self.run = run


@contextmanager
def opened_run(
    study: str | Path, out: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Iterator[Session]:
    """The run of ``study`` (a study file, or a run directory to resume), open for writing.

    ``overrides`` set dotted keys of the study (``{"budget.trials": 40}``). Without ``out``
    a study file's run directory is ``runs/<study name>``. The directory is locked and the
    ``autoprune`` log is also written to ``RUN/logs/search.log`` while the block runs.
    Ctrl-C inside the block raises :class:`SearchStopped` naming the run directory.
    """
    path = Path(study)
    if path.is_dir():
        run = RunDir(path)
        if out is not None and Path(out).resolve() != path.resolve():
            raise StudyError(
                f"--out {out}: {path} is a run directory, which resumes where it is; "
                f"leave --out out, or give a study file to start a new run in {out}"
            )
        if not run.study_file.is_file():
            raise StudyError(f"{path} is not a run directory: it has no study.yaml")
        spec = load_study(run.study_file, overrides)
    else:
        spec = load_study(path, overrides)
        run = RunDir(Path(out) if out is not None else Path("runs") / spec.name)
    with RunLock(run):
        handler = log_to_run(run, "search")
        try:
            session = open_session(spec, run)
            session.search.recover_interrupted()
            session.baseline.recover_interrupted()
            yield session
        except KeyboardInterrupt:
            raise SearchStopped(run.path) from None
        finally:
            logging.getLogger("autoprune").removeHandler(handler)


def run_search(
    study: str | Path, out: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Path:
    """Run (or resume) the search ``study`` describes, then its uniform baseline; returns
    the run directory.

    With ``objectives.targets`` the search is targeted (screen many candidates of exactly
    each size, retrain the best few: :class:`TargetedSearch`); otherwise the controller
    searches freely within the size band, the band checked against the search space before
    any trial. Either runs on the study's backend.
    """
    with opened_run(study, out, overrides) as session:
        spec = session.spec
        if spec.objectives.targets:
            with executor(session) as chosen:
                TargetedSearch(session, chosen).run()
        else:
            Proposer(
                session.search, session.space, session.sizes, spec.objectives, session.settings
            ).check_reachable()
            run_trials(session)
        if spec.baseline.ratios:
            train_baselines(session, baseline_configs(session, spec.baseline.ratios))
        return session.run.path


def run_baselines(
    study: str | Path,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    uniform: Sequence[float] = (),
    head_ratios: Sequence[float] = (),
    ffn_ratios: Sequence[float] = (),
    targets: Sequence[tuple[TargetKind, float]] = (),
) -> Path:
    """Train the uniform ratios, the layer-uniform grid (every head ratio with every
    feed-forward ratio) and the ``(kind, target)`` baselines (``uniform``, ``layer-uniform``
    or ``global`` at sizes in the study's size unit; ``uniform-sparsity`` or ``owl`` at
    sparsities; ``block-influence`` at fractions of the layers removed:
    :mod:`autoprune.run.baselines`) into the run of ``study``; returns the run directory.
    Baselines already recorded are not trained again.

    Raises:
        BudgetError: If a target size cannot be met, before anything is trained.
    """
    if bool(head_ratios) != bool(ffn_ratios):
        raise StudyError("head and feed-forward ratios go together (a layer-uniform grid)")
    with opened_run(study, out, overrides) as session:
        baselines = baseline_configs(session, uniform, head_ratios, ffn_ratios, targets)
        train_baselines(session, baselines)
        return session.run.path
