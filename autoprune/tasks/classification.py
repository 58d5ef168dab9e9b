"""Sequence classification: a label per example, a metric that goes up, logits distilled.

The model is a ``*ForSequenceClassification`` with one output per label; its loss is cross
entropy; distillation is the KL divergence to the dense model's softened logits (Hinton et
al. 2015), whose full logits are small enough to cache for every retraining example, and the
same KL at temperature 1, per example, is its divergence from the dense model; the
metric (accuracy, Matthews correlation or F1) is computed on arg-max predictions, and the
hypervolume counts from chance level.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autoprune.engine.models import load_model
from autoprune.tasks.base import Batch, Direction, Reduction, Task, TeacherMode, model_inputs
from autoprune.tasks.data import Encoded
from autoprune.tasks.metrics import METRICS, MetricName, chance_level


class Classification(Task):
    """A classification task with ``num_labels`` labels scored by ``metric``."""

    kind: ClassVar[str] = "classification"
    direction: Direction = "maximize"
    teacher: TeacherMode = "cached"

    def __init__(self, *, metric: MetricName, num_labels: int) -> None:
        if num_labels < 2:
            raise ValueError(f"a classification task needs 2 or more labels, got {num_labels}")
        self.metric: MetricName = metric
        self.num_labels = num_labels

    def load_model(self, source: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_model(source, num_labels=self.num_labels, seed=seed)

    def loss(
        self, model: PreTrainedModel, batch: Batch, reduction: Reduction = "mean"
    ) -> torch.Tensor:
        logits = model(**model_inputs(batch)).logits  # (batch, labels)
        return F.cross_entropy(logits, batch["labels"], reduction=reduction)

    def distillation_loss(
        self,
        model: PreTrainedModel,
        batch: Batch,
        teacher: torch.Tensor,
        temperature: float,
        weight: float,
    ) -> torch.Tensor:
        logits = model(**model_inputs(batch)).logits  # (batch, labels)
        hard = F.cross_entropy(logits, batch["labels"])
        t = temperature
        # scaled by t^2 so gradients keep their size (Hinton et al.)
        soft = kl_per_example(logits / t, teacher / t).mean() * (t * t)
        return weight * soft + (1 - weight) * hard

    def divergence(
        self, model: PreTrainedModel, batch: Batch, teacher: torch.Tensor
    ) -> torch.Tensor:
        logits = model(**model_inputs(batch)).logits  # (batch, labels)
        return kl_per_example(logits.float(), teacher)  # (batch,)

    def teacher_targets(self, model: PreTrainedModel, batch: Batch) -> torch.Tensor:
        with torch.inference_mode():
            return model(**model_inputs(batch)).logits.float()  # (batch, labels)

    def example_outputs(self, model: PreTrainedModel, data: Encoded) -> torch.Tensor:
        """The predicted label of each example, ``(examples,)``."""
        return predict(model, data).argmax(dim=-1)  # (examples,)

    def metric_of(self, outputs: torch.Tensor, data: Encoded) -> float:
        if data.labels is None:
            raise ValueError("a classifier's metric needs labelled examples; these have none")
        return METRICS[self.metric](outputs.long(), data.labels)

    @property
    def reference(self) -> float:
        return chance_level(self.metric, self.num_labels)


def kl_per_example(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` for each row of two ``(batch, labels)``
    logit tensors, ``(batch,)``."""
    return F.kl_div(
        F.log_softmax(student, dim=-1),
        F.log_softmax(teacher, dim=-1),
        log_target=True,
        reduction="none",
    ).sum(dim=-1)  # (batch,)


def predict(model: PreTrainedModel, data: Encoded, batch_size: int = 128) -> torch.Tensor:
    """Logits ``(examples, labels)`` of ``model`` on ``data``, on the CPU; the model's
    train/eval mode is restored afterwards."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def logits(batch: Batch) -> torch.Tensor:
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        return model(**inputs).logits.float()  # (batch, labels)

    try:
        with torch.inference_mode():
            return data.map_rows(logits, batch_size)
    finally:
        model.train(was_training)
