"""Screening: score a candidate retrain-free, by how far it is from the dense model.

A :class:`Screener` prunes a candidate (optionally refits what is left with
:func:`autoprune.engine.recovery.recover`) and scores it on calibration examples against the
dense model, whose outputs on those examples are computed once and reused for every
candidate. Every fitness is oriented the same way: **lower is better**.

- ``kl``: the mean KL divergence of the pruned model's output distribution from the dense
  model's (:meth:`Task.divergence`: per example over the labels for a classifier, per token
  for a language model). 0 for the dense model.
- ``hidden``: the squared error of the last hidden state against the dense model's, over an
  example's real tokens, divided by the dense hidden state's sum of squares there; the mean
  over examples. 0 for the dense model.
- ``loss``: the task's training loss, the mean over examples.
- ``fisher``: Kwon et al. 2022's estimate of the loss increase from removing the candidate's
  heads and neurons, ``1/2 * mean_n (g_n . r)^2``: ``g_n`` is example ``n``'s gradient of its
  own loss with respect to the gate of every head and neuron of the dense model
  (:func:`autoprune.engine.importance.gate_gradients`, computed once per range of examples),
  ``r`` is 1 for each unit the candidate removes. The empirical Fisher information of the
  gates, interactions within and between layers included; no forward pass per candidate.
  Heads and neurons only: a candidate with sparsity or dropped layers is refused. 0 for the
  dense model.
- ``metric``: the task's metric on the search split, negated where higher is better
  (``-accuracy``), plus :data:`TIE_BREAK` times the task loss on the same examples, so that
  candidates the metric cannot tell apart (a Matthews correlation of 0 for every pruned
  classifier that predicts one class) are ordered by their loss rather than by the order
  they came in.

:func:`select` is EvoPress's multi-step selection (Sieberling et al. 2024, "EvoPress: Towards
Optimal Dynamic Model Compression via Evolutionary Search"): every candidate is scored on a
small calibration slice, the best few on a larger fresh slice, and so on. It asks a
:class:`BatchScreener` for each step's outcomes, a list of candidates at a time: a
:class:`Screener` in this process, or a backend's workers.

The ``kl``, ``hidden``, ``loss`` and ``fisher`` kinds read the pool split (what retraining
and importance read, never the search or test split); ``metric`` reads the search split.
Recovery is fitted on the first ``recovery_examples`` of the pool, which are then never
scored, so the refit cannot flatter the fitness by fitting the examples it is measured on.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, get_args

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.arch import describe
from autoprune.engine.importance import gate_gradients
from autoprune.engine.measure import measure
from autoprune.engine.prune import PruneConfig, kept_units, prune
from autoprune.engine.recovery import Calibration, recover
from autoprune.run.prepare import Prepared
from autoprune.run.trial import SIZE_UNITS, Stage, flat_attrs
from autoprune.search.spec import Fitness, ScreeningSpec
from autoprune.tasks.base import Batch, model_inputs
from autoprune.tasks.data import Encoded

FITNESSES: tuple[Fitness, ...] = get_args(Fitness)
TIE_BREAK = 1e-6
"""The weight of the task loss in the ``metric`` fitness: below any metric difference read
on a few hundred examples, above float rounding."""


@dataclass
class ScreenOutcome:
    """What screening one candidate measured: the retrain-free counterpart of a TrialOutcome.

    Attributes:
        config: The PruneConfig screened.
        ratios: Size as a fraction of the dense model, in every unit.
        size: Absolute size in every unit.
        fitness: The candidate's fitness; lower is better.
        fitness_kind: What ``fitness`` is.
        examples: The ``[start, stop)`` range of the screening split's examples scored.
        recovered: Whether the candidate was refit by recovery before scoring.
        seconds: Time spent pruning (and recovering), scoring, and in all.
        stage: ``screen``.
        fidelity: The number of examples scored.
    """

    config: PruneConfig
    ratios: dict[str, float]
    size: dict[str, int]
    fitness: float
    fitness_kind: Fitness
    examples: tuple[int, int]
    recovered: bool
    seconds: dict[str, float] = field(default_factory=dict)
    stage: Stage = "screen"
    fidelity: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` reads it back."""
        return {**asdict(self), "config": self.config.to_dict(), "examples": list(self.examples)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScreenOutcome:
        config = PruneConfig.from_dict(data["config"])
        return cls(**{**data, "config": config, "examples": tuple(data["examples"])})

    def to_attrs(self) -> dict[str, Any]:
        """Flat JSON-ready attributes for an Optuna trial."""
        return flat_attrs(self.to_dict())


class BatchScreener(Protocol):
    """Screens lists of candidates on slices of one screening split: a :class:`Screener` in
    this process, or a backend's workers, each holding one."""

    @property
    def examples(self) -> int:
        """How many examples the screening split holds."""
        ...

    def screen(self, configs: Sequence[PruneConfig], examples: slice) -> list[ScreenOutcome]:
        """Each of ``configs`` screened on ``examples`` of the split; outcomes in their order."""
        ...


def screening_split(prepared: Prepared, fitness: Fitness, recovery_examples: int) -> Encoded:
    """The examples a :class:`Screener` with ``fitness`` and ``recovery_examples`` scores:
    the search split for ``metric``, else the pool after its first ``recovery_examples``.

    Raises:
        ValueError: If ``fitness`` is unknown, or ``recovery_examples`` is out of range.
    """
    if fitness not in FITNESSES:
        raise ValueError(f"fitness must be one of {', '.join(FITNESSES)}; got {fitness!r}")
    pool = prepared.data.pool
    if not 0 <= recovery_examples < len(pool):
        raise ValueError(
            f"recovery_examples must be in [0, {len(pool)}) (the pool's size), "
            f"got {recovery_examples}"
        )
    if fitness == "metric":
        return prepared.data.search
    return pool.subset(slice(recovery_examples, None))


class Screener:
    """Scores PruneConfigs of one prepared study without retraining them.

    The dense model's outputs on a range of examples are computed the first time the range
    is scored and reused for every later candidate scored on it.

    Args:
        prepared: The study's prepared work (task, dense model, data, importance scores).
        fitness: What a candidate is scored by (see the module's docstring).
        recovery_examples: Pool examples that recovery is fitted on; 0 scores candidates as
            pruned. Those examples are left out of the pool split the other fitnesses read.
        batch_size: Examples per forward pass.
        device: Where candidates are scored (the dense model is copied there if it is not).

    Raises:
        ValueError: If ``fitness`` is unknown, or ``recovery_examples`` or ``batch_size`` is
            out of range, or recovery is asked of ``fisher``.
    """

    def __init__(
        self,
        prepared: Prepared,
        *,
        fitness: Fitness = "kl",
        recovery_examples: int = 0,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        self.data: Encoded = screening_split(prepared, fitness, recovery_examples)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if fitness == "fisher" and recovery_examples:
            raise ValueError(
                "recovery_examples must be 0 with fitness 'fisher', which reads no pruned model"
            )
        self.prepared = prepared
        self.fitness: Fitness = fitness
        self.batch_size = batch_size
        self.device = torch.device(device)
        dense = prepared.model
        if next(dense.parameters()).device != self.device:
            dense = nn.Module.to(copy.deepcopy(dense), self.device)
        self.dense: PreTrainedModel = dense.eval()
        self.calibration: Calibration | None = None
        if recovery_examples:
            fitting = prepared.data.pool.subset(slice(0, recovery_examples)).batches(batch_size)
            self.calibration = Calibration.record(self.dense, [model_inputs(b) for b in fitting])
        self._dense_outputs: dict[tuple[int, int], list[torch.Tensor]] = {}
        self._gate_gradients: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def of_study(
        cls, prepared: Prepared, screening: ScreeningSpec, device: str | torch.device
    ) -> Screener:
        """The screener a study's ``screening`` settings describe (fitness and recovery)."""
        return cls(
            prepared,
            fitness=screening.fitness,
            recovery_examples=screening.recovery_examples,
            device=device,
        )

    @property
    def examples(self) -> int:
        """How many examples the screening split holds."""
        return len(self.data)

    def screen(
        self, configs: Sequence[PruneConfig], examples: slice = slice(None)
    ) -> list[ScreenOutcome]:
        """Each of ``configs`` screened on ``examples`` (:func:`screen_candidate`), in order."""
        return [screen_candidate(self, config, examples) for config in configs]

    def candidate(self, config: PruneConfig) -> PreTrainedModel:
        """``config`` applied to the dense model (and refit, with recovery), on the device."""
        model = prune(self.dense, config, self.prepared.scores).eval()
        if self.calibration is not None:
            recover(model, self.calibration, kept=config.kept_layers())
        return model

    def score(
        self, model: PreTrainedModel, examples: slice, config: PruneConfig | None = None
    ) -> float:
        """The fitness of ``model``, pruned to ``config``, on the screening split's
        ``examples``; lower is better. ``fisher`` reads ``config`` only, the others ``model``.

        Raises:
            ValueError: If ``examples`` selects no example, or the fitness is ``fisher`` and
                ``config`` is missing or has sparsity or dropped layers.
        """
        start, stop, _ = examples.indices(self.examples)
        if stop <= start:
            raise ValueError(f"examples: {examples} selects none of {self.examples} examples")
        part = self.data.subset(slice(start, stop))
        if self.fitness == "fisher":
            if config is None:
                raise ValueError("fitness 'fisher' scores a PruneConfig: pass config=")
            return self._fisher(config, part, (start, stop))
        scorers = {
            "kl": self._kl,
            "hidden": self._hidden,
            "loss": self._loss,
            "metric": self._metric,
        }
        with torch.inference_mode():
            return scorers[self.fitness](model, part, (start, stop))

    def _batches(self, part: Encoded) -> list[dict[str, torch.Tensor]]:
        return [{k: v.to(self.device) for k, v in b.items()} for b in part.batches(self.batch_size)]

    def _dense(
        self,
        key: tuple[int, int],
        batches: list[dict[str, torch.Tensor]],
        output: Callable[[PreTrainedModel, Batch], torch.Tensor],
    ) -> list[torch.Tensor]:
        """The dense model's ``output`` on each batch of the examples ``key``, computed once."""
        if key not in self._dense_outputs:
            self._dense_outputs[key] = [output(self.dense, b) for b in batches]
        return self._dense_outputs[key]

    def _kl(self, model: PreTrainedModel, part: Encoded, key: tuple[int, int]) -> float:
        task, batches = self.prepared.task, self._batches(part)
        teachers = self._dense(key, batches, task.teacher_targets)
        values = [task.divergence(model, b, t) for b, t in zip(batches, teachers, strict=True)]
        return float(torch.cat(values).mean())

    def _hidden(self, model: PreTrainedModel, part: Encoded, key: tuple[int, int]) -> float:
        batches, errors = self._batches(part), []
        dense = self._dense(key, batches, last_hidden)
        for batch, reference in zip(batches, dense, strict=True):
            hidden = last_hidden(model, batch)  # (batch, seq, hidden)
            mask = batch["attention_mask"][..., None]  # (batch, seq, 1)
            squared = ((hidden - reference).pow(2) * mask).sum(dim=(1, 2))  # (batch,)
            errors.append(squared / (reference.pow(2) * mask).sum(dim=(1, 2)))  # (batch,)
        return float(torch.cat(errors).mean())

    def _loss(self, model: PreTrainedModel, part: Encoded, key: tuple[int, int]) -> float:
        task = self.prepared.task
        total = sum(float(task.loss(model, b, reduction="sum")) for b in self._batches(part))
        return total / len(part)

    def _fisher(self, config: PruneConfig, part: Encoded, key: tuple[int, int]) -> float:
        if any(config.sparsity) or not all(config.kept_layers()):
            raise ValueError(
                "fitness 'fisher' estimates the loss increase of removing heads and neurons; "
                f"this candidate also sets sparsity or drops layers ({config.to_json()}): "
                "use kl, hidden, loss or metric"
            )
        if key not in self._gate_gradients:
            task = self.prepared.task
            self._gate_gradients[key] = gate_gradients(
                self.dense, self._batches(part), lambda m, b: task.loss(m, b, reduction="sum")
            )
        gradients = self._gate_gradients[key]  # (examples, units)
        return 0.5 * float((gradients @ self.removed(config)).pow(2).mean())

    def removed(self, config: PruneConfig) -> torch.Tensor:
        """1.0 for each query head and neuron that ``config`` removes, else 0, ``(units,)``
        in :func:`~autoprune.engine.importance.gate_gradients`' order."""
        arch = describe(self.dense)
        kept = kept_units(config, self.prepared.scores, arch)
        heads = [torch.ones(n) for n in arch.heads]
        neurons = [torch.ones(n) for n in arch.ffn]
        for (keep_heads, _, keep_neurons), head, neuron in zip(kept, heads, neurons, strict=True):
            head[keep_heads] = 0.0
            neuron[keep_neurons] = 0.0
        return torch.cat([*heads, *neurons])  # (units,)

    def _metric(self, model: PreTrainedModel, part: Encoded, key: tuple[int, int]) -> float:
        task = self.prepared.task
        loss = self._loss(model, part, key)
        return -task.score(task.evaluate(model, part)) + TIE_BREAK * loss


def last_hidden(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """The last layer's hidden states of ``model`` on ``batch``, ``(batch, seq, hidden)``."""
    outputs = model(**model_inputs(batch), output_hidden_states=True)
    return outputs.hidden_states[-1].float()  # (batch, seq, hidden)


def screen_candidate(
    screener: Screener, config: PruneConfig, examples: slice = slice(None)
) -> ScreenOutcome:
    """Prune (and recover) ``config``, measure it and score it on ``examples`` of the
    screening split (all of them by default), without retraining."""
    started = time.perf_counter()
    model = screener.candidate(config)
    built = time.perf_counter()
    fitness = screener.score(model, examples, config)
    scored = time.perf_counter()
    dense = screener.prepared.dense.size
    size = measure(model, dense.seq_len)
    start, stop, _ = examples.indices(screener.examples)
    return ScreenOutcome(
        config=config,
        ratios={unit: size.ratio(dense, unit) for unit in SIZE_UNITS},
        size=size.to_dict(),
        fitness=fitness,
        fitness_kind=screener.fitness,
        examples=(start, stop),
        recovered=screener.calibration is not None,
        seconds={
            "prune": built - started,
            "score": scored - built,
            "total": time.perf_counter() - started,
        },
        fidelity=float(stop - start),
    )


def select(
    screener: BatchScreener,
    candidates: Sequence[PruneConfig],
    schedule: Sequence[tuple[int, int]],
    on_outcome: Callable[[ScreenOutcome], None] | None = None,
) -> list[ScreenOutcome]:
    """Multi-step selection on growing, fresh calibration slices (EvoPress, Sieberling et al.
    2024).

    Stage ``i`` of ``schedule = [(n_0, keep_0), (n_1, keep_1), ...]`` scores the candidates
    still in on the next ``n_i`` examples of the screening split, disjoint from every earlier
    stage's (stage 0 reads examples ``[0, n_0)``, stage 1 ``[n_0, n_0 + n_1)``, ...), and keeps
    the best ``min(keep_i, candidates in)``; ties keep the earlier candidate.

    Args:
        screener: What scores the candidates, a step's survivors in one list.
        candidates: The PruneConfigs to choose from.
        schedule: ``(examples, keep)`` per stage.
        on_outcome: Called with every outcome, in the order measured (to record it).

    Returns:
        The last stage's survivors, best first, each with its outcome at that stage.

    Raises:
        ValueError: If ``candidates`` or ``schedule`` is empty, a stage's numbers are below 1,
            or the stages need more examples than the screening split holds.
    """
    if not candidates:
        raise ValueError("candidates: nothing to select from")
    if not schedule:
        raise ValueError("schedule: give at least one (examples, keep) stage")
    for stage, (n, keep) in enumerate(schedule):
        if n < 1 or keep < 1:
            raise ValueError(f"schedule: stage {stage} is ({n}, {keep}); both must be >= 1")
    needed = sum(n for n, _ in schedule)
    if needed > screener.examples:
        raise ValueError(
            f"schedule: the stages need {needed} examples, the screening split holds "
            f"{screener.examples}"
        )
    survivors = list(candidates)
    ranked: list[ScreenOutcome] = []
    start = 0
    for n, keep in schedule:
        outcomes = screener.screen(survivors, slice(start, start + n))
        if on_outcome is not None:
            for outcome in outcomes:
                on_outcome(outcome)
        ranked = sorted(outcomes, key=lambda o: o.fitness)[:keep]
        survivors = [o.config for o in ranked]
        start += n
    return ranked


def last_stage(schedule: Sequence[tuple[int, int]]) -> slice:
    """The examples that :func:`select`'s last stage of ``schedule`` reads: where its
    survivors are compared, and where any other candidate should be scored to compare
    with them."""
    start = sum(n for n, _ in schedule[:-1])
    return slice(start, start + schedule[-1][0])
