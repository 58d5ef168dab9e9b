"""Training and evaluation: dense fine-tuning, brief retraining with distillation, metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from autoprune.progress import progress
from autoprune.tasks.data import Encoded
from autoprune.tasks.metrics import MetricName, score


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class Recipe:
    """How to train.

    Attributes:
        steps: Optimizer steps (0 trains nothing).
        batch_size: Examples per step.
        lr: Peak learning rate of AdamW (linear warm-up, then linear decay to 0).
        weight_decay: AdamW's decoupled weight decay.
        warmup: Fraction of the steps spent warming up.
        temperature: Distillation temperature (with a teacher).
        distill_weight: Weight of the distillation loss; the label loss gets ``1 - distill_weight``.
        seed: Seeds the order of the examples and dropout.
    """

    steps: int
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    temperature: float = 2.0
    distill_weight: float = 0.5
    seed: int = 0


def _forever(
    data: Encoded, batch_size: int, seed: int, teacher: torch.Tensor | None
) -> Iterator[dict[str, torch.Tensor]]:
    extra = {"teacher": teacher} if teacher is not None else None
    epoch = 0
    while True:
        yield from data.batches(batch_size, shuffle=True, seed=seed + epoch, extra=extra)
        epoch += 1


def train(
    model: PreTrainedModel,
    data: Encoded,
    recipe: Recipe,
    teacher_logits: torch.Tensor | None = None,
    on_step: Callable[[int], bool] | None = None,
    desc: str = "train",
) -> int:
    """Train ``model`` in place for ``recipe.steps`` steps; returns the steps taken.

    With ``teacher_logits`` (one row per example of ``data``) the loss mixes the KL
    divergence to the teacher at ``recipe.temperature`` (scaled by its square, as Hinton et
    al.) with the label loss. ``on_step(step)`` is called after every step; returning False
    stops training there. Raises :class:`TrainingDiverged` on a NaN or infinite loss.
    """
    if recipe.steps <= 0:
        return 0
    device = next(model.parameters()).device
    torch.manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
    )
    warmup_steps = max(1, int(recipe.warmup * recipe.steps))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (recipe.steps - step) / max(1, recipe.steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = _forever(data, recipe.batch_size, recipe.seed, teacher_logits)
    model.train()
    step = 0
    for step in progress(range(1, recipe.steps + 1), desc):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        labels = batch.pop("labels")
        teacher = batch.pop("teacher", None)
        logits = model(**batch).logits  # (batch, labels)
        loss = F.cross_entropy(logits, labels)
        if teacher is not None:
            t = recipe.temperature
            distill = F.kl_div(
                F.log_softmax(logits / t, dim=-1),
                F.log_softmax(teacher / t, dim=-1),
                log_target=True,
                reduction="batchmean",
            ) * (t * t)
            loss = recipe.distill_weight * distill + (1 - recipe.distill_weight) * loss
        if not math.isfinite(loss.item()):
            raise TrainingDiverged(f"{desc}: the loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if on_step is not None and not on_step(step):
            break
    model.eval()
    return step


def predict(model: PreTrainedModel, data: Encoded, batch_size: int = 128) -> torch.Tensor:
    """Logits ``(examples, labels)`` of ``model`` on ``data``, on the CPU, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = data.attention_mask.sum(dim=1).argsort()  # similar lengths batch together
    outputs = []
    with torch.inference_mode():
        for batch in data.subset(order).batches(batch_size):
            batch.pop("labels")
            outputs.append(
                model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
            )
    model.train(was_training)
    logits = torch.empty(len(data), outputs[0].shape[-1]) if outputs else torch.empty(0, 0)
    if outputs:
        logits[order] = torch.cat(outputs)
    return logits


def evaluate(
    model: PreTrainedModel, data: Encoded, metric: MetricName, batch_size: int = 128
) -> float:
    """The task metric of ``model`` on ``data``."""
    return score(metric, predict(model, data, batch_size), data.labels)
