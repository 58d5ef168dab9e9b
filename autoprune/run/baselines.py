"""Baselines trained into a run the same way as the search's trials.

``uniform``: one keep ratio for heads and feed-forward neurons in every layer, or, for a
target size, every layer keeping the same fraction of its cost
(:meth:`~autoprune.search.budget.BudgetSpace.at`).
``layer-uniform``: one configuration in every layer, head and feed-forward ratios chosen
independently (a grid).
For a target size, ``layer-uniform`` keeps the same heads in every layer and shares the rest
evenly among the feed-forward blocks
(:meth:`~autoprune.search.budget.BudgetSpace.layer_uniform`); of the head counts that can
meet the target, the one whose allocation screens best (the study's screening fitness, on the
examples where a targeted search compares its survivors) is trained. Those screenings are not
recorded.
``global``: for a target size, the heads and neurons of every layer ranked together by the
study's importance scores per unit of cost
(:meth:`~autoprune.search.budget.BudgetSpace.global_allocation`).

Target sizes are ratios to the dense model in the study's size unit (``objectives.size``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from autoprune.engine.arch import describe
from autoprune.engine.prune import PruneConfig
from autoprune.run.execute import execute
from autoprune.run.ledger import KIND, STATUS, TARGET, Kind
from autoprune.run.screen import Screener, last_stage
from autoprune.run.session import Session
from autoprune.search.budget import BudgetSpace
from autoprune.search.spec import StudyError

TargetKind = Literal["uniform", "layer-uniform", "global"]
TARGET_KINDS: tuple[TargetKind, ...] = ("uniform", "layer-uniform", "global")

log = logging.getLogger("autoprune")


@dataclass(frozen=True)
class Baseline:
    """One baseline configuration to train.

    Attributes:
        kind: The baseline's kind.
        config: What it keeps.
        target: The size it was built for, or None for one built from ratios.
    """

    kind: Kind
    config: PruneConfig
    target: float | None = None


def baseline_configs(
    session: Session,
    uniform: Sequence[float] = (),
    head_ratios: Sequence[float] = (),
    ffn_ratios: Sequence[float] = (),
    targets: Sequence[tuple[TargetKind, float]] = (),
) -> list[Baseline]:
    """Uniform configurations (one keep ratio for heads and ffn in every layer), then the
    layer-uniform grid (every pair of a head ratio and a feed-forward ratio), then one
    configuration per ``(kind, target size)`` of ``targets``.

    Raises:
        BudgetError: If a target cannot be met, or the study's size unit is ``nonzero``.
    """
    arch = describe(session.prepared.model)
    pairs: list[tuple[Kind, float, float]] = [("uniform", r, r) for r in uniform]
    pairs += [("layer-uniform", h, f) for h in head_ratios for f in ffn_ratios]
    baselines = [Baseline(kind, PruneConfig.uniform(arch, heads=h, ffn=f)) for kind, h, f in pairs]
    if targets:
        space = BudgetSpace(session.sizes, session.spec.objectives.size)
        for kind, target in targets:
            if kind == "global":
                config = space.to_config(space.global_allocation(session.prepared.scores, target))
            elif kind == "layer-uniform":
                config = _best_screened(session, space, target)
            else:
                config = space.to_config(space.at(target))
            baselines.append(Baseline(kind, config, target))
    return baselines


def _best_screened(session: Session, space: BudgetSpace, target: float) -> PruneConfig:
    """Of the layer-uniform allocations at ``target``, the one with the best screening
    fitness (the study's ``screening`` settings)."""
    screening = session.spec.screening
    screener = Screener(
        session.prepared,
        fitness=screening.fitness,
        recovery_examples=screening.recovery_examples,
        device=session.settings.device,
    )
    examples = last_stage(screening.schedule)
    if examples.stop > screener.examples:
        raise StudyError(
            f"screening.schedule: its last step scores examples {examples.start} to "
            f"{examples.stop}, the screening split holds {screener.examples}"
        )
    choices = [space.to_config(allocation) for allocation in space.layer_uniform_choices(target)]
    outcomes = screener.screen(choices, examples)
    best = min(outcomes, key=lambda outcome: outcome.fitness)
    log.info(
        "layer-uniform at %g: %d head count(s) screened, %s heads per layer kept (%s %.4f)",
        target,
        len(outcomes),
        best.config.heads[0],
        screening.fitness,
        best.fitness,
    )
    return best.config


def train_baselines(session: Session, baselines: Sequence[Baseline]) -> None:
    """Train baseline configurations with the study's recipe into the run's baseline study.

    A configuration already recorded as complete for its kind is not trained again.
    """
    ledger = session.baseline
    ledger.recover_interrupted()
    done = [
        (t.user_attrs.get(KIND), t.user_attrs.get("config"))
        for t in ledger.study.get_trials(deepcopy=False)
        if t.user_attrs.get(STATUS) == "complete"
    ]
    todo = [b for b in baselines if (b.kind, b.config.to_dict()) not in done]
    log.info(
        "baseline: %d configuration(s) to train, %d already done",
        len(todo),
        len(baselines) - len(todo),
    )
    for baseline in todo:
        number = ledger.study.ask().number
        if baseline.target is not None:
            ledger.note(number, {TARGET: baseline.target})
        execute(session.prepared, session.settings, ledger, number, baseline.config, baseline.kind)
