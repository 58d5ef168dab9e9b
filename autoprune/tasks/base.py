"""The Task protocol: everything that depends on what the model is for.

A task loads the model class it trains, computes its training loss and its distillation
loss against the dense model, evaluates its metric, and says which way the metric goes and
where a hypervolume's reference lies. The rest of autoprune (training, importance, trials,
fronts, early stopping, reports) asks the task and assumes nothing about labels, logits or
the metric's direction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autoprune.tasks.data import Encoded

Direction = Literal["maximize", "minimize"]
TeacherMode = Literal["cached", "online"]
Reduction = Literal["mean", "sum"]
Batch = Mapping[str, torch.Tensor]

# Keys of a batch that are not model inputs: targets, and rows attached to the examples.
NOT_INPUTS = frozenset({"labels", "teacher"})


def oriented(metric: float, direction: Direction) -> float:
    """``metric`` as a score where higher is better: itself, or its negative when the metric
    is minimized (perplexity, say)."""
    return metric if direction == "maximize" else -metric


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """The entries of ``batch`` that the model takes as keyword arguments."""
    return {k: v for k, v in batch.items() if k not in NOT_INPUTS}


class Task(ABC):
    """What a pruned model is measured on and trained for.

    Attributes:
        kind: The task's registered name (``classification``, ...).
        metric: The metric's name, as reports show it.
        direction: ``maximize`` when a higher metric is better, ``minimize`` otherwise.
        teacher: ``cached`` when the dense model's targets for the retraining examples fit in
            memory and are computed once per run; ``online`` when the dense model runs beside
            the student in every retraining step instead.
    """

    kind: ClassVar[str]
    metric: str
    direction: Direction
    teacher: TeacherMode

    @abstractmethod
    def load_model(self, source: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The dense model to prune and its tokenizer; any new head is initialised from ``seed``."""

    @abstractmethod
    def loss(
        self, model: PreTrainedModel, batch: Batch, reduction: Reduction = "mean"
    ) -> torch.Tensor:
        """The training loss of ``model`` on ``batch``: its mean or its sum over examples."""

    @abstractmethod
    def distillation_loss(
        self,
        model: PreTrainedModel,
        batch: Batch,
        teacher: torch.Tensor,
        temperature: float,
        weight: float,
    ) -> torch.Tensor:
        """``weight`` times the divergence of ``model`` from the teacher's targets ``teacher``
        (the rows of :meth:`teacher_targets` for ``batch``'s examples) at ``temperature``,
        plus ``1 - weight`` times the training loss; a mean over examples."""

    @abstractmethod
    def divergence(
        self, model: PreTrainedModel, batch: Batch, teacher: torch.Tensor
    ) -> torch.Tensor:
        """How far ``model``'s output distribution is from the dense model's on ``batch``.

        Returns one KL divergence ``KL(dense || model)`` per scored item, ``(items,)``: per
        example for a classifier (its distribution over labels), per predicted token for a
        language model. ``teacher`` holds the rows of :meth:`teacher_targets` for ``batch``'s
        examples. Each value is >= 0, and 0 where the outputs equal the dense model's; lower
        is closer. Callers turn gradients off."""

    @abstractmethod
    def teacher_targets(self, model: PreTrainedModel, batch: Batch) -> torch.Tensor:
        """The dense ``model``'s targets for ``batch``, as :meth:`distillation_loss` reads them."""

    @abstractmethod
    def example_outputs(self, model: PreTrainedModel, data: Encoded) -> torch.Tensor:
        """What ``model`` outputs for each example of ``data``, one row per example
        (``(examples, ...)``, on the CPU): all :meth:`metric_of` needs to score any subset of
        the examples (a predicted label, a summed loss and a token count, ...)."""

    @abstractmethod
    def metric_of(self, outputs: torch.Tensor, data: Encoded) -> float:
        """The task's metric of the rows ``outputs`` of :meth:`example_outputs`, for the
        examples ``data`` (same length, same order; a resample may repeat examples)."""

    def evaluate(self, model: PreTrainedModel, data: Encoded) -> float:
        """The task's metric of ``model`` on ``data``."""
        return self.metric_of(self.example_outputs(model, data), data)

    @property
    @abstractmethod
    def reference(self) -> float:
        """The worst metric a hypervolume counts from: chance level, or a stated cap."""

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "maximize"

    def score(self, metric: float) -> float:
        """The metric oriented so that higher is better (what fronts compare)."""
        return oriented(metric, self.direction)
