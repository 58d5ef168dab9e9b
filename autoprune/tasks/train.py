"""The training loop over a task's loss: dense fine-tuning, and brief retraining with
distillation from the dense model."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.progress import progress
from autoprune.tasks.base import Task
from autoprune.tasks.data import Encoded


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
        distill_weight: Weight of the distillation loss; the task's loss gets
            ``1 - distill_weight``.
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


Teacher = torch.Tensor | PreTrainedModel
"""Cached targets (one row per example of the training data), or the dense model itself,
run beside the student on every batch (a task whose targets are too large to cache)."""


def _forever(
    data: Encoded, batch_size: int, seed: int, cached: torch.Tensor | None
) -> Iterator[dict[str, torch.Tensor]]:
    extra = {"teacher": cached} if cached is not None else None
    epoch = 0
    while True:
        yield from data.batches(batch_size, shuffle=True, seed=seed + epoch, extra=extra)
        epoch += 1


def train(
    model: PreTrainedModel,
    data: Encoded,
    recipe: Recipe,
    task: Task,
    teacher: Teacher | None = None,
    on_step: Callable[[int], bool] | None = None,
    desc: str = "train",
) -> int:
    """Train ``model`` in place on ``task``'s loss for ``recipe.steps`` steps; returns the
    steps taken. The model is left in eval mode.

    With a ``teacher`` the loss is the task's distillation loss at ``recipe.temperature``,
    weighted by ``recipe.distill_weight``; a teacher model is moved to the student's
    device. ``on_step(step)`` is called after every step;
    returning False stops training there. Raises :class:`TrainingDiverged` on a NaN or
    infinite loss.
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
    cached = teacher if isinstance(teacher, torch.Tensor) else None
    if isinstance(teacher, nn.Module):
        nn.Module.to(teacher, device)  # an online teacher runs where the student does
    batches = _forever(data, recipe.batch_size, recipe.seed, cached)
    step = 0
    model.train()
    try:
        for step in progress(range(1, recipe.steps + 1), desc):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            if teacher is None:
                loss = task.loss(model, batch)
            else:
                targets = (
                    batch.pop("teacher")
                    if cached is not None
                    else task.teacher_targets(teacher, batch)  # type: ignore[arg-type]
                )
                loss = task.distillation_loss(
                    model, batch, targets, recipe.temperature, recipe.distill_weight
                )
            if not math.isfinite(loss.item()):
                raise TrainingDiverged(f"{desc}: the loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            if on_step is not None and not on_step(step):
                break
    finally:
        model.eval()
    return step
