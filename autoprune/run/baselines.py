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

For decoders (any family), three more kinds keep every head and neuron:

``uniform-sparsity``: the target is a sparsity: every layer zeroes that fraction of its
prunable weights, chosen by the study's per-weight scores (with ``importance.method:
activation``, Wanda: the same share of every output row, by ``|w| * ||x||``).
``owl``: the target is the mean sparsity; each layer's comes from its share of outlier Wanda
scores (:mod:`autoprune.engine.owl`, ``M = 5``, ``lam = 0.08``), pruned like
``uniform-sparsity``. Needs ``importance.method: activation``.
``block-influence``: the target is the fraction of the layers to remove, ``round(target *
layers)`` of them: those whose output is most like their input on the importance
calibration examples (:mod:`autoprune.engine.influence`, ShortGPT).

A study reads a sparse model's size best in ``objectives.size: nonzero``; in the other units
every sparse model has the dense size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal, get_args

import torch
from torch import nn

from autoprune.engine.arch import describe
from autoprune.engine.influence import block_influence, least_influential
from autoprune.engine.owl import outlier_ratios, owl_sparsity
from autoprune.engine.prune import PruneConfig
from autoprune.run.execute import execute
from autoprune.run.ledger import KIND, STATUS, TARGET, Kind
from autoprune.run.screen import Screener, last_stage
from autoprune.run.session import Session
from autoprune.search.budget import BudgetError, BudgetSpace
from autoprune.search.spec import StudyError
from autoprune.tasks.base import model_inputs

TargetKind = Literal[
    "uniform", "layer-uniform", "global", "uniform-sparsity", "owl", "block-influence"
]
TARGET_KINDS: tuple[TargetKind, ...] = get_args(TargetKind)

log = logging.getLogger("autoprune")


@dataclass(frozen=True)
class Baseline:
    """One baseline configuration to train.

    Attributes:
        kind: The baseline's kind.
        config: What it keeps.
        target: What it was built for (a size, a sparsity or a fraction of the layers
            removed, as its kind says), or None for one built from ratios.
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
    configuration per ``(kind, target)`` of ``targets``.

    Raises:
        BudgetError: If a target cannot be met, or a size target is asked for in the size
            unit ``nonzero``.
        StudyError: If ``owl`` is asked for without Wanda (``activation``) scores.
    """
    arch = describe(session.prepared.model)
    pairs: list[tuple[Kind, float, float]] = [("uniform", r, r) for r in uniform]
    pairs += [("layer-uniform", h, f) for h in head_ratios for f in ffn_ratios]
    baselines = [Baseline(kind, PruneConfig.uniform(arch, heads=h, ffn=f)) for kind, h, f in pairs]
    builder = _TargetBaselines(session)
    baselines += [Baseline(kind, builder.build(kind, target), target) for kind, target in targets]
    return baselines


class _TargetBaselines:
    """Each kind's configuration at a target, for one session; what several targets share
    (the budget space, the block influence) is computed once."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dense = PruneConfig.dense(describe(session.prepared.model))
        self._builders: dict[TargetKind, Callable[[float], PruneConfig]] = {
            "uniform": self.uniform,
            "layer-uniform": self.layer_uniform,
            "global": self.global_allocation,
            "uniform-sparsity": self.uniform_sparsity,
            "owl": self.owl,
            "block-influence": self.block_influence,
        }

    def build(self, kind: TargetKind, target: float) -> PruneConfig:
        return self._builders[kind](target)

    @cached_property
    def space(self) -> BudgetSpace:
        return BudgetSpace(self.session.sizes, self.session.spec.objectives.size)

    def uniform(self, target: float) -> PruneConfig:
        return self.space.to_config(self.space.at(target))

    def layer_uniform(self, target: float) -> PruneConfig:
        return _best_screened(self.session, self.space, target)

    def global_allocation(self, target: float) -> PruneConfig:
        scores = self.session.prepared.scores
        return self.space.to_config(self.space.global_allocation(scores, target))

    def uniform_sparsity(self, target: float) -> PruneConfig:
        if not 0.0 <= target < 1.0:
            raise BudgetError(f"uniform-sparsity: target {target} is a sparsity, in [0, 1)")
        return replace(self.dense, sparsity=(target,) * self.dense.num_layers)

    def owl(self, target: float) -> PruneConfig:
        scores = self.session.prepared.scores
        if scores.method != "activation":
            raise StudyError(
                f"owl reads Wanda scores: the study's importance.method is {scores.method!r}; "
                "use activation"
            )
        try:
            sparsity = owl_sparsity(outlier_ratios(scores), target)
        except ValueError as error:
            raise BudgetError(f"owl: {error}") from None
        log.info("owl at %g: layer sparsities %s", target, [round(s, 3) for s in sparsity])
        return replace(self.dense, sparsity=tuple(sparsity))

    @cached_property
    def influence(self) -> torch.Tensor:
        return calibration_influence(self.session)

    def block_influence(self, target: float) -> PruneConfig:
        layers = self.dense.num_layers
        remove = round(target * layers)
        if not 0 < remove < layers:
            raise BudgetError(
                f"block-influence: target {target} removes {remove} of {layers} layers; "
                f"it must remove at least one and keep at least one"
            )
        return replace(self.dense, layers=tuple(least_influential(self.influence, remove)))


def calibration_influence(session: Session) -> torch.Tensor:
    """Every layer's block influence (:func:`~autoprune.engine.influence.block_influence`)
    on the session's importance calibration examples, ``(layers,)``."""
    prepared, imp = session.prepared, session.spec.importance
    calibration = prepared.data.pool.subset(slice(0, imp.samples))
    batches = (model_inputs(batch) for batch in calibration.batches(imp.batch_size))
    model = nn.Module.to(prepared.model, torch.device(session.settings.device))
    try:
        influence = block_influence(model, batches)
    finally:
        prepared.model.cpu()
    log.info("block influence: %s", [round(float(v), 4) for v in influence])
    return influence


def _best_screened(session: Session, space: BudgetSpace, target: float) -> PruneConfig:
    """Of the layer-uniform allocations at ``target``, the one with the best screening
    fitness (the study's ``screening`` settings)."""
    screening = session.spec.screening
    screener = Screener.of_study(session.prepared, screening, session.settings.device)
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
