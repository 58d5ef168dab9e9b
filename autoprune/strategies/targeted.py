"""A targeted, multi-fidelity search: at each target size, screen many, retrain few.

For each of ``objectives.targets``:

1. **Screen.** The controller proposes allocations of exactly the target size in the budget
   space of the study's search space (heads and neurons, per-layer sparsity or kept layers:
   :func:`~autoprune.search.targets.budget_space`), through a
   :class:`~autoprune.search.targets.TargetEncoding`: level switches for ``evo``, decoded
   weights for the others. A first generation evaluates the starts: the uniform
   allocation, and for ``evo`` the space's heuristics too (:meth:`TargetedSearch.heuristics`:
   global importance for heads and neurons, OWL for sparsity, block influence for layers).
   Then each generation of
   ``screening.offspring`` candidates goes through EvoPress's multi-step selection
   (:func:`autoprune.run.screen.select`): scored retrain-free on a small calibration slice,
   the best few on a larger fresh one, and so on. Survivors are told to the controller
   with their fitness on the last slice (the same slice for every generation, so fitnesses
   compare); the others are recorded as stopped. Every candidate is recorded in the run's
   storage, in the target's screening study, with stage ``screen`` and its fidelity (the
   examples it was scored on).
2. **Retrain.** The best ``screening.finalists`` distinct screened allocations, plus the
   uniform allocation and the space's heuristics (so the search can never hand back a model
   worse on the search split than those baselines), are retrained with the study's recipe
   and recorded in the search study with stage ``retrain``, the target and their origins
   (``screened``, ``uniform``, ``global``, ``owl``, ``block-influence``). The front is read
   from these records only; the model a user gets at a target is chosen among these
   finalists on the search split (:func:`autoprune.reports.compare.choose`: by default the
   heuristic's, unless another finalist beats it by more than the split's noise).

Resuming continues each target where it stopped: screened candidates are not screened
again, and finalists already retrained are not retrained.

This module decides what is screened and retrained; an
:class:`~autoprune.strategies.executor.Executor` of the study's backend decides where
(in this process, or on Ray workers), and the records are the same either way.
"""

from __future__ import annotations

import logging
import time
from functools import cached_property
from typing import Any

import optuna
import torch

from autoprune.engine.prune import PruneConfig
from autoprune.run.baselines import calibration_influence
from autoprune.run.ledger import ORIGINS, STATUS, TARGET, Ledger, Origin
from autoprune.run.rundir import open_study, screening_study_name
from autoprune.run.screen import ScreenOutcome, last_stage, select
from autoprune.run.session import Session
from autoprune.search.budget import BudgetSpace
from autoprune.search.budget_depth import DepthBudget
from autoprune.search.budget_sparsity import SparsityBudget
from autoprune.search.controllers import EvoOptions, make_sampler
from autoprune.search.levels import Heuristic
from autoprune.search.spec import StudyError
from autoprune.search.targets import TargetEncoding, budget_space
from autoprune.strategies.executor import Executor

log = logging.getLogger("autoprune")


def retrained_at(study: optuna.Study, target: float) -> set[str]:
    """The configurations (:meth:`PruneConfig.to_json`) retrained to completion for
    ``target`` in a search ``study``: what resuming does not retrain again."""
    return {
        PruneConfig.from_dict(t.user_attrs["config"]).to_json()
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(STATUS) == "complete" and t.user_attrs.get(TARGET) == target
    }


class TargetedSearch:
    """Screens and retrains at every target of a session's study (see the module), on
    ``executor``."""

    def __init__(self, session: Session, executor: Executor) -> None:
        """Ready to run the session's study on ``executor``.

        Raises:
            StudyError: If ``screening.fitness`` is ``fisher`` and the space searches
                sparsity or layers, which that fitness cannot score.
        """
        spec = session.spec
        space = session.space.spec
        if spec.screening.fitness == "fisher" and (
            space.sparsity is not None or space.layers is not None
        ):
            raise StudyError(
                "screening.fitness: fisher estimates the loss increase of removing heads and "
                "neurons, and this study's search space also searches sparsity or layers; "
                "use kl, hidden, loss or metric"
            )
        self.session = session
        self.spec = spec
        self.executor = executor
        self.space = budget_space(session.space.spec, session.sizes, spec.objectives.size)
        schedule = spec.screening.schedule
        self.final_slice = last_stage(schedule)  # where survivors compare
        self.fidelity = float(sum(n for n, _ in schedule))  # examples a candidate may see

    def run(self) -> None:
        """Screen, then retrain finalists, at every target in turn."""
        for target in self.spec.objectives.targets:
            ledger, encoding = self._screening(target)
            self._screen(target, ledger, encoding)
            self._retrain(target, ledger)

    # -- screening -------------------------------------------------------------------------

    def _screening(self, target: float) -> tuple[Ledger, TargetEncoding]:
        """The target's screening study (fitness, minimized) with the study's controller
        proposing through the target's encoding."""
        spec, session = self.spec, self.session
        study = open_study(spec, session.storage, screening_study_name(target), ["minimize"])
        evo = self._evo_options()
        encoding = TargetEncoding(
            self.space,
            target,
            "levels" if evo is not None else "weights",
            swaps=evo.swaps if evo is not None else 1,
        )
        done = len(study.get_trials(deepcopy=False))
        study.sampler = make_sampler(
            spec.controller.name,
            spec.controller.seed + 1_000_003 * done,  # a resumed search proposes anew
            spec.screening.candidates,
            spec.controller.options,
            mutation=encoding.mutate,
        )
        ledger = Ledger(
            study,
            task=session.prepared.task,
            size_unit=spec.objectives.size,
            run=session.run,
            early_stopping=spec.early_stopping,
        )
        ledger.recover_interrupted()
        return ledger, encoding

    def _evo_options(self) -> EvoOptions | None:
        """The evolutionary controller's options, or None for another controller."""
        controller = self.spec.controller
        return EvoOptions.model_validate(controller.options) if controller.name == "evo" else None

    def heuristics(self, target: float) -> dict[Heuristic, Any]:
        """The allocations of size ``target`` that rules of thumb give in this space, by
        name: ``uniform`` (:meth:`~autoprune.search.levels.LevelSpace.at`), then ``global``
        (heads and neurons by importance per cost), ``owl`` (sparsity, with Wanda scores:
        ``importance.method: activation``) or ``block-influence`` (kept layers)."""
        space, scores = self.space, self.session.prepared.scores
        found: dict[Heuristic, Any] = {"uniform": space.at(target)}
        if isinstance(space, BudgetSpace):
            found["global"] = space.global_allocation(scores, target)
        elif isinstance(space, SparsityBudget) and scores.method == "activation":
            found["owl"] = space.owl(scores, target)
        elif isinstance(space, DepthBudget):
            found["block-influence"] = space.by_influence(self._influence, target)
        return found

    @cached_property
    def _influence(self) -> torch.Tensor:
        return calibration_influence(self.session)

    def _starts(self, target: float, encoding: TargetEncoding) -> list[dict[str, Any]]:
        """The parameters of the first generation: the uniform allocation, and for ``evo``
        its ``starts`` (every heuristic of the space by default).

        Raises:
            StudyError: If ``controller.options.starts`` names a heuristic the space lacks.
        """
        evo = self._evo_options()
        found = self.heuristics(target)
        names: list[Heuristic] = ["uniform"] if evo is None else list(evo.starts or found)
        missing = [name for name in names if name not in found]
        if missing:
            raise StudyError(
                f"controller.options.starts: {', '.join(missing)} is not a heuristic of this "
                f"search space at target {target}; it has {', '.join(found)}"
            )
        starts = [encoding.params(found[name]) for name in dict.fromkeys(names)]
        return [params for params in starts if params is not None]

    def _screen(self, target: float, ledger: Ledger, encoding: TargetEncoding) -> None:
        """Screen candidates at ``target`` until ``screening.candidates`` are recorded."""
        study = ledger.study
        screening = self.spec.screening
        screened = sum(
            t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            for t in study.get_trials(deepcopy=False)
        )
        if screened == 0:  # the first generation: the starts, on the survivors' slice
            trials = []
            for params in self._starts(target, encoding):
                study.enqueue_trial(params)
                trials.append(study.ask(encoding.distributions()))
            configs = self._started(ledger, encoding, trials)
            outcomes = self.executor.screen(configs, self.final_slice)
            for trial, outcome in zip(trials, outcomes, strict=True):
                ledger.record_screened(trial.number, outcome, survived=True)
            screened += len(trials)
        started, first = time.perf_counter(), screened
        last: dict[str, ScreenOutcome] = {}  # each candidate's outcome at its last step
        while screened < screening.candidates:
            size = min(screening.offspring, screening.candidates - screened)
            trials = [study.ask(encoding.distributions()) for _ in range(size)]
            configs = self._started(ledger, encoding, trials)
            last.clear()
            survivors = select(
                self.executor,
                configs,
                screening.schedule,
                on_outcome=lambda o: last.__setitem__(o.config.to_json(), o),
            )
            kept = {o.config.to_json() for o in survivors}
            for trial, config in zip(trials, configs, strict=True):
                key = config.to_json()
                ledger.record_screened(trial.number, last[key], survived=key in kept)
            screened += size
            rate = (screened - first) / max(time.perf_counter() - started, 1e-9)
            best = study.best_trial
            log.info(
                "target %g: %d/%d screened (%.1f/s), best %s %.4f (trial %d)",
                target,
                screened,
                screening.candidates,
                rate,
                screening.fitness,
                best.values[0],
                best.number,
            )

    def _started(
        self, ledger: Ledger, encoding: TargetEncoding, trials: list[optuna.trial.Trial]
    ) -> list[PruneConfig]:
        """The configurations of ``trials``, each started in the ledger as a screening."""
        configs = [encoding.config(t.params) for t in trials]
        for trial, config in zip(trials, configs, strict=True):
            ledger.start(trial.number, "search", config, "screen", self.fidelity)
        return configs

    # -- retraining ------------------------------------------------------------------------

    def _finalists(self, target: float, ledger: Ledger) -> list[tuple[PruneConfig, list[Origin]]]:
        """The best ``screening.finalists`` distinct screened configurations, then the
        space's :meth:`heuristics` at ``target``; each once, with where it came from
        (``screened``, ``uniform``, ...: one or several)."""
        complete = ledger.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
        )
        configs: dict[str, PruneConfig] = {}
        origins: dict[str, list[Origin]] = {}
        found: list[tuple[Origin, PruneConfig]] = []
        for trial in sorted(complete, key=lambda t: t.values[0]):
            if len(found) == self.spec.screening.finalists:
                break
            config = PruneConfig.from_dict(trial.user_attrs["config"])
            if all(config != seen for _, seen in found):
                found.append(("screened", config))
        for name, allocation in self.heuristics(target).items():
            found.append((name, self.space.to_config(allocation)))
        for origin, config in found:
            key = config.to_json()
            configs.setdefault(key, config)
            origins.setdefault(key, []).append(origin)
        return [(config, origins[key]) for key, config in configs.items()]

    def _retrain(self, target: float, screening: Ledger) -> None:
        """Retrain the finalists at ``target`` that are not retrained yet, noting the target."""
        done = retrained_at(self.session.search.study, target)
        finalists = [
            (config, origins)
            for config, origins in self._finalists(target, screening)
            if config.to_json() not in done
        ]
        log.info(
            "target %g: retraining %d finalist(s), %d already retrained",
            target,
            len(finalists),
            len(done),
        )
        self.executor.retrain(
            [(config, {TARGET: target, ORIGINS: origins}) for config, origins in finalists]
        )
