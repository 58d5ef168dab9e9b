"""An open run: its study, prepared work, search space and Optuna studies, and the running
and recording of trials in this process (search trials and baselines).

:func:`open_session` opens or creates a run; :func:`evaluate_and_record` runs one trial and
writes it to the Optuna study; :func:`run_baseline_configs` trains baselines into the run.
``autoprune.run.search.run_search`` puts these together with a backend.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution

from autoprune.engine.arch import describe
from autoprune.engine.measure import SizeModel
from autoprune.engine.prune import PruneConfig
from autoprune.engine.serialize import save_pruned
from autoprune.run.ledger import (
    KIND,
    STATUS,
    Kind,
    count_spent,
    front_trials,
    record_checkpoint_error,
    record_rung,
    recover_interrupted,
    rung_points,
    tell_not_complete,
    tell_outcome,
)
from autoprune.run.prepare import Prepared, check_inputs, pick_device, prepare
from autoprune.run.rundir import (
    BASELINE,
    SEARCH,
    RunDir,
    open_study,
    write_atomically,
)
from autoprune.run.trial import OutsideSizeBand, TrialOutcome, TrialSettings, run_trial
from autoprune.search.controllers import make_sampler
from autoprune.search.early_stopping import should_continue
from autoprune.search.space import SearchSpace, SearchSpaceSpec, load_space
from autoprune.search.spec import StudyError, StudySpec, load_study, save_study
from autoprune.tasks.metrics import chance_level

log = logging.getLogger("autoprune")

# Give up when the controller proposes this many configurations outside the size band in a
# row: the band is reachable (checked at start) but the controller is not finding it.
MAX_OUTSIDE_BAND_IN_A_ROW = 200


@dataclass
class Session:
    """An open run: its study, prepared work, search space and Optuna studies."""

    spec: StudySpec
    run: RunDir
    prepared: Prepared
    space: SearchSpace
    settings: TrialSettings
    search: optuna.Study
    baseline: optuna.Study
    sizes: SizeModel
    started: float = field(default_factory=time.perf_counter)

    def size_ratio(self, config: PruneConfig) -> float:
        """The configuration's size in the study's unit, foreseen without building it."""
        return self.sizes.size(config).ratio(self.sizes.dense, self.settings.size_unit)

    def propose(
        self, study: optuna.Study, distributions: dict[str, BaseDistribution]
    ) -> tuple[optuna.trial.Trial, PruneConfig]:
        """Ask the controller for a configuration inside the size band.

        Configurations outside the band are recorded as such before any training is spent,
        and do not count towards the budget; the controller is asked again.
        """
        for _ in range(MAX_OUTSIDE_BAND_IN_A_ROW):
            trial = study.ask(distributions)
            config = self.space.to_config(trial.params)
            ratio = self.size_ratio(config)
            if self.settings.in_band(ratio):
                return trial, config
            error = OutsideSizeBand(ratio, self.settings.size_unit, self.settings.band)
            tell_not_complete(
                study, trial, "outside_band", str(error), "search", {"config": config.to_dict()}
            )
        raise StudyError(
            f"the controller proposed {MAX_OUTSIDE_BAND_IN_A_ROW} configurations in a row "
            f"outside the size band; widen objectives.min_size/max_size or the search space"
        )

    def keep_front_checkpoint(
        self, study: optuna.Study, number: int, write: Callable[[Path], object]
    ) -> None:
        """Keep trial ``number``'s retrained model (``write(directory)`` writes it) if the
        trial is on ``study``'s front, and delete the checkpoints the front no longer holds.

        Export then loads exactly the weights whose metric the trial recorded. A checkpoint
        that cannot be written (an ``OSError``) is logged and recorded on the study (see
        :func:`record_checkpoint_error`); no partial copy stays, and the search goes on.
        """
        which = SEARCH if study is self.search else BASELINE
        front = {t.number for t in front_trials(study)}
        if number in front:
            try:
                write_atomically(self.run.checkpoint(which, number), write)
            except OSError as error:  # a full disk, say: the trial stays, without weights
                log.warning("trial %d: its checkpoint could not be written: %s", number, error)
                record_checkpoint_error(study, number, f"{type(error).__name__}: {error}")
        for path in self.run.checkpoints.glob(f"{which}_*"):
            number_text = path.name.rsplit("_", 1)[1]  # a ".partial" left by a kill goes too
            if not number_text.isdigit() or int(number_text) not in front:
                shutil.rmtree(path, ignore_errors=True)

    def report(self, study: optuna.Study, outcome: TrialOutcome, number: int) -> None:
        """A progress line: trials done, this trial's numbers, the front so far, the rate."""
        done = count_spent(study)
        budget = self.spec.budget.trials
        elapsed = time.perf_counter() - self.started
        front = sorted(front_trials(study), key=lambda t: t.values[1])
        front_text = ", ".join(f"{t.values[1]:.2f}:{t.values[0]:.3f}" for t in front[:8])
        log.info(
            "%s trial %d (%d%s done): %s %.4f search / %.4f test at size %.3f, %.0f s | "
            "front (size:metric) %s | %.0f s elapsed",
            study.study_name.rsplit(".", 1)[-1],
            number,
            done,
            f"/{budget}" if budget and study is self.search else "",
            self.prepared.task.metric,
            outcome.metric_search,
            outcome.metric_test,
            outcome.values(self.settings.size_unit)[1],
            outcome.seconds["total"],
            front_text,
            elapsed,
        )


def _check_band_is_reachable(session: Session) -> None:
    """A clear error, before any training, when no configuration of the space fits the band."""
    settings = session.settings
    if settings.min_size is None and settings.max_size is None:
        return
    smallest, largest = sorted(session.size_ratio(c) for c in session.space.extremes())
    low = settings.min_size if settings.min_size is not None else 0.0
    high = settings.max_size if settings.max_size is not None else 1.0
    if largest < low or smallest > high:
        raise StudyError(
            f"objectives.min_size/max_size: no configuration fits the size band "
            f"[{low:g}, {high:g}] ({settings.size_unit}): the search "
            f"space {session.spec.search_space.name} spans sizes {smallest:.3f} to {largest:.3f}"
        )


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

    Read-only, nothing in the run is written (unless prepared work is missing) and the size
    band is not re-checked: for export and for reading a finished run.
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
    space = SearchSpace(_search_space(spec, run, read_only), describe(prepared.model))
    if not read_only:
        save_study(spec, run.study_file)
    search = open_study(spec, storage, SEARCH, None)
    # A resumed search seeds its controller anew, or it would propose its first trials again.
    seed = spec.controller.seed + 1_000_003 * len(search.trials)
    search.sampler = make_sampler(spec.controller.name, seed, spec.budget.trials)
    baseline = open_study(spec, storage, BASELINE, None)
    if not read_only:
        for study in (search, baseline):
            study.set_user_attr("dense", prepared.dense.to_dict())
            study.set_user_attr("metric", spec.data.metric)
            study.set_user_attr("size_unit", spec.objectives.size)
            study.set_user_attr("chance", chance_level(spec.data.metric, prepared.task.num_labels))
    session = Session(
        spec,
        run,
        prepared,
        space,
        TrialSettings.from_spec(spec, device),
        search,
        baseline,
        SizeModel.of(prepared.model, prepared.dense.size),
    )
    if not read_only:
        _check_band_is_reachable(session)
    return session


def evaluate_and_record(
    session: Session,
    study: optuna.Study,
    trial: optuna.trial.Trial,
    config: PruneConfig,
    kind: Kind,
) -> TrialOutcome | None:
    """Run one trial in this process and record it; a failure is recorded, not raised."""
    extra = {"config": config.to_dict()}
    reached: dict[str, list[float]] = {}
    stopping = session.spec.early_stopping

    def on_rung(step: int, metric: float, size: float) -> bool:
        reached[str(step)] = [metric, size]
        record_rung(study, trial._trial_id, reached)
        others = rung_points(study, step, exclude=trial.number)
        return should_continue(others, (metric, size), stopping.keep, stopping.min_trials)

    use_rungs = kind == "search" and bool(stopping.rungs)
    try:
        outcome, model = run_trial(
            session.prepared, config, session.settings, on_rung if use_rungs else None
        )
    except OutsideSizeBand as error:
        tell_not_complete(study, trial, "outside_band", str(error), kind, extra)
        return None
    except KeyboardInterrupt:
        tell_not_complete(study, trial, "interrupted", "stopped by the user", kind, extra)
        raise
    except Exception as error:  # a failing trial is recorded and the search goes on
        log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
        tell_not_complete(study, trial, "failed", f"{type(error).__name__}: {error}", kind, extra)
        return None
    tell_outcome(study, trial, outcome, session.settings.size_unit, kind)
    if outcome.stopped_at is not None:
        log.info(
            "trial %d stopped early at rung %d: %s %.4f at size %.3f",
            trial.number,
            outcome.stopped_at,
            session.prepared.task.metric,
            outcome.metric_search,
            outcome.values(session.settings.size_unit)[1],
        )
        return outcome
    tokenizer = session.prepared.tokenizer
    session.keep_front_checkpoint(
        study, trial.number, lambda path: save_pruned(model, path, tokenizer)
    )
    session.report(study, outcome, trial.number)
    return outcome


def baseline_configs(
    session: Session,
    uniform: Sequence[float] = (),
    head_ratios: Sequence[float] = (),
    ffn_ratios: Sequence[float] = (),
) -> list[tuple[Kind, PruneConfig]]:
    """Uniform configurations (one keep ratio for heads and ffn in every layer), then the
    layer-uniform grid (every pair of a head ratio and a feed-forward ratio)."""
    arch = describe(session.prepared.model)
    pairs: list[tuple[Kind, float, float]] = [("uniform", r, r) for r in uniform]
    pairs += [("layer-uniform", h, f) for h in head_ratios for f in ffn_ratios]
    return [(kind, PruneConfig.uniform(arch, heads=h, ffn=f)) for kind, h, f in pairs]


def run_baseline_configs(session: Session, configs: Sequence[tuple[Kind, PruneConfig]]) -> None:
    """Train baseline configurations with the study's recipe into the run's baseline study.

    A configuration already recorded (complete) is not trained again.
    """
    recover_interrupted(session.baseline)
    done = [
        (t.user_attrs.get(KIND), t.user_attrs.get("config"))
        for t in session.baseline.get_trials(deepcopy=False)
        if t.user_attrs.get(STATUS) in ("complete", "outside_band")
    ]
    todo = [(k, c) for k, c in configs if (k, c.to_dict()) not in done]
    log.info(
        "baseline: %d configuration(s) to train, %d already done",
        len(todo),
        len(configs) - len(todo),
    )
    for kind, config in todo:
        trial = session.baseline.ask()
        evaluate_and_record(session, session.baseline, trial, config, kind)


def open_run(run_dir: str | Path, read_only: bool = True) -> Session:
    """Reopen an existing run directory with its own saved study."""
    run = RunDir(Path(run_dir))
    return open_session(run.load_spec(), run, read_only)
