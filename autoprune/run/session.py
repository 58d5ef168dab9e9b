"""An open run: its study, prepared work, search space, size model and the two ledgers.

:func:`open_session` opens or creates a run directory: it refuses a directory that holds
another study, prepares (or reads back) the shared work, opens the Optuna studies with the
study's controller and wraps each in a :class:`~autoprune.run.ledger.Ledger`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from autoprune.engine.arch import describe
from autoprune.engine.measure import SizeModel
from autoprune.run.ledger import Ledger
from autoprune.run.prepare import Prepared, check_inputs, pick_device, prepare
from autoprune.run.rundir import BASELINE, SEARCH, RunDir, open_study
from autoprune.run.trial import TrialSettings, check_recovery_examples
from autoprune.search.controllers import make_sampler
from autoprune.search.space import SearchSpace, SearchSpaceSpec, load_space
from autoprune.search.spec import StudyError, StudySpec, load_study, save_study


@dataclass
class Session:
    """An open run.

    Attributes:
        spec: The resolved study.
        run: The run directory's files.
        prepared: The shared work every trial reads.
        space: The search space laid over the dense model.
        settings: What every trial shares besides the prepared work.
        sizes: The exact size of any configuration, without building it.
        storage: The run's Optuna storage, which holds every study of the run.
        search: The ledger of the search's trials.
        baseline: The ledger of the baselines' trials.
    """

    spec: StudySpec
    run: RunDir
    prepared: Prepared
    space: SearchSpace
    settings: TrialSettings
    sizes: SizeModel
    storage: BaseStorage
    search: Ledger
    baseline: Ledger


def _search_space(spec: StudySpec, run: RunDir, read_only: bool) -> SearchSpaceSpec:
    """The run's own copy of its search space; a new run copies the study's."""
    if not run.space_file.is_file():
        if read_only:
            raise StudyError(f"{run.path} has no search_space.yaml: not a run directory")
        space = load_space(spec.search_space)
        shutil.copyfile(spec.search_space, run.space_file)
        return space
    space = load_space(run.space_file)
    if not read_only and spec.search_space.is_file() and load_space(spec.search_space) != space:
        raise StudyError(
            f"search_space: {spec.search_space} differs from the space {run.path} was started "
            f"with ({run.space_file}); start a new run directory (--out) to search another space"
        )
    return space


def open_session(spec: StudySpec, run: RunDir, read_only: bool = False) -> Session:
    """Open the run (creating it unless ``read_only``): prepare, open both Optuna studies.

    Read-only, nothing in the run is written unless prepared work is missing: for export
    and for reading a finished run.
    """
    if not read_only:
        run.path.mkdir(parents=True, exist_ok=True)
        held = load_study(run.study_file).name if run.study_file.is_file() else spec.name
        if held != spec.name:
            raise StudyError(
                f"{run.path} holds study {held!r}, not {spec.name!r}; use another --out"
            )
    device = pick_device(spec.device)
    if not read_only:  # seconds now rather than after the dense model is prepared
        check_inputs(spec, run.prepared)
        if not run.space_file.is_file():
            load_space(spec.search_space)
    storage = run.open_storage(spec, create=not read_only)
    prepared = prepare(spec, run.prepared, device)  # refuses a run prepared differently
    check_recovery_examples(prepared, spec.retrain.recovery_examples)
    task = prepared.task
    space = SearchSpace(_search_space(spec, run, read_only), describe(prepared.model))
    if not read_only:
        save_study(spec, run.study_file)
    search = open_study(spec, storage, SEARCH, [task.direction, "minimize"])
    # A resumed search seeds its controller anew, or it would propose its first trials again.
    seed = spec.controller.seed + 1_000_003 * len(search.get_trials(deepcopy=False))
    search.sampler = make_sampler(
        spec.controller.name, seed, spec.budget.trials, spec.controller.options
    )
    baseline = open_study(spec, storage, BASELINE, [task.direction, "minimize"])
    if not read_only:
        for study in (search, baseline):
            study.set_user_attr("dense", prepared.dense.to_dict())
            study.set_user_attr("metric", task.metric)
            study.set_user_attr("direction", task.direction)
            study.set_user_attr("size_unit", spec.objectives.size)
            study.set_user_attr("reference", task.reference)

    def ledger(study: optuna.Study, budget: int | None) -> Ledger:
        return Ledger(
            study,
            task=task,
            size_unit=spec.objectives.size,
            run=run,
            early_stopping=spec.early_stopping,
            budget=budget,
        )

    return Session(
        spec=spec,
        run=run,
        prepared=prepared,
        space=space,
        settings=TrialSettings.from_spec(spec, device),
        sizes=SizeModel.of(prepared.model, prepared.dense.size),
        storage=storage,
        search=ledger(search, spec.budget.trials),
        baseline=ledger(baseline, None),
    )


def open_run(run_dir: str | Path, read_only: bool = True) -> Session:
    """Reopen an existing run directory with its own saved study."""
    run = RunDir(Path(run_dir))
    return open_session(run.load_spec(), run, read_only)
