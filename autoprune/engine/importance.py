"""Importance criteria: how much each head, neuron and weight matters.

Every criterion is one small class behind :class:`Criterion`, returning :class:`Scores`
(higher is more important). Pruning reads Scores and never a concrete criterion.

- ``magnitude``: L2 norm of a head's (neuron's) rows and columns; ``|w|`` per weight.
- ``taylor``: Michel et al. 2019, "Are Sixteen Heads Really Better than One?": the expected
  absolute gradient of the loss with respect to a gate on each head and neuron, per example;
  ``sum |w * dL/dw|`` per weight.
- ``fisher``: Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers":
  the empirical Fisher information of each gate, the sum over examples of the squared
  per-example gate gradient; ``sum (w * dL/dw)^2`` per weight.
- ``random``: uniform random scores, the control.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from autoprune.engine.arch import Family, describe, family_of
from autoprune.engine.gates import gated
from autoprune.engine.scores import Scores
from autoprune.engine.sparsity import effective_weight
from autoprune.progress import progress

Method = Literal["magnitude", "taylor", "fisher", "random"]
Batch = Mapping[str, torch.Tensor]


class Criterion(ABC):
    """An importance criterion: from a model (and data, where it needs it) to :class:`Scores`."""

    name: ClassVar[str]

    @abstractmethod
    def score(self, model: PreTrainedModel, batches: Iterable[Batch]) -> Scores:
        """Scores for every head, neuron and prunable weight of ``model``."""


class Magnitude(Criterion):
    """Weight norms; needs no data."""

    name = "magnitude"

    def score(self, model: PreTrainedModel, batches: Iterable[Batch]) -> Scores:
        family = family_of(model)
        head_dim = describe(model).head_dim
        heads, neurons, weights = [], [], []
        with torch.no_grad():
            for layer in family.layers(model):
                linears = family.prunable_linears(layer)
                w = {path: effective_weight(lin).float() for path, lin in linears.items()}
                heads.append(_grouped_norm(family, w, "head", head_dim).cpu())
                neurons.append(_grouped_norm(family, w, "neuron", 1).cpu())
                weights.append({path: t.abs().cpu() for path, t in w.items()})
        return Scores(self.name, heads, neurons, weights)


def _grouped_norm(
    family: Family, weights: dict[str, torch.Tensor], unit: Literal["head", "neuron"], size: int
) -> torch.Tensor:
    """L2 norm, per head (``size`` rows/columns each) or per neuron, over the layer's matrices."""
    lay = family.layout
    if unit == "head":
        row_paths, column_path = (*lay.query, *lay.key_value), lay.attention_out
    else:
        row_paths, column_path = lay.ffn_in, lay.ffn_out
    columns = weights[column_path]  # (hidden, units * size)
    hidden = columns.shape[0]
    total = columns.view(hidden, -1, size).pow(2).sum(dim=(0, 2))  # (units,)
    for path in row_paths:
        if path in weights:
            rows = weights[path]  # (units * size, hidden)
            total = total + rows.view(-1, size, rows.shape[1]).pow(2).sum(dim=(1, 2))
    return total.sqrt()


class _GateGradient(Criterion):
    """Shared loop of the gradient criteria: per-example gate gradients, per-batch weight ones."""

    @staticmethod
    @abstractmethod
    def reduce(gradient: torch.Tensor) -> torch.Tensor:
        """How one gradient contributes to a score (absolute value, square)."""

    def score(self, model: PreTrainedModel, batches: Iterable[Batch]) -> Scores:
        family = family_of(model)
        arch = describe(model)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        layers = family.layers(model)
        linears = [family.prunable_linears(layer) for layer in layers]
        heads = [torch.zeros(n) for n in arch.heads]
        neurons = [torch.zeros(n) for n in arch.ffn]
        weights = [
            {p: torch.zeros_like(lin.weight, device="cpu") for p, lin in ls.items()}
            for ls in linears
        ]
        params = [lin.weight for ls in linears for lin in ls.values()]
        seen = 0
        for batch in progress(batches, f"importance ({self.name})"):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            size = labels.shape[0]
            head_gates = [
                torch.ones(size, n, device=device, requires_grad=True) for n in arch.heads
            ]
            neuron_gates = [
                torch.ones(size, n, device=device, requires_grad=True) for n in arch.ffn
            ]
            with gated(model, head_gates, neuron_gates):
                logits = model(**batch).logits  # (batch, labels)
            loss = F.cross_entropy(logits, labels, reduction="sum")
            inputs = [*head_gates, *neuron_gates, *params]
            raw = torch.autograd.grad(loss, inputs, allow_unused=True)
            grads = [
                g if g is not None else torch.zeros_like(t)
                for g, t in zip(raw, inputs, strict=True)
            ]
            n_layers = arch.num_layers
            for i in range(n_layers):
                heads[i] += self.reduce(grads[i]).sum(dim=0).cpu()
                neurons[i] += self.reduce(grads[n_layers + i]).sum(dim=0).cpu()
            weight_grads = iter(grads[2 * n_layers :])
            for i, ls in enumerate(linears):
                for path, lin in ls.items():
                    taylor = effective_weight(lin).detach() * next(weight_grads)
                    weights[i][path] += self.reduce(taylor).cpu()
            seen += size
        model.train(was_training)
        if seen == 0:
            raise ValueError(f"importance ({self.name}) needs data: no batch was given")
        heads = [h / seen for h in heads]
        neurons = [n / seen for n in neurons]
        weights = [{p: w / seen for p, w in ws.items()} for ws in weights]
        return Scores(self.name, heads, neurons, weights)


class Taylor(_GateGradient):
    """Expected absolute gate gradient (Michel et al. 2019)."""

    name = "taylor"

    @staticmethod
    def reduce(gradient: torch.Tensor) -> torch.Tensor:
        return gradient.abs()


class Fisher(_GateGradient):
    """Empirical Fisher information of the gates (Kwon et al. 2022)."""

    name = "fisher"

    @staticmethod
    def reduce(gradient: torch.Tensor) -> torch.Tensor:
        return gradient.pow(2)


class RandomScores(Criterion):
    """Uniform random scores from a seeded generator; the control."""

    name = "random"

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def score(self, model: PreTrainedModel, batches: Iterable[Batch]) -> Scores:
        family = family_of(model)
        arch = describe(model)
        generator = torch.Generator().manual_seed(self.seed)
        heads = [torch.rand(n, generator=generator) for n in arch.heads]
        neurons = [torch.rand(n, generator=generator) for n in arch.ffn]
        weights = [
            {
                p: torch.rand(lin.weight.shape, generator=generator)
                for p, lin in family.prunable_linears(layer).items()
            }
            for layer in family.layers(model)
        ]
        return Scores(self.name, heads, neurons, weights)


CRITERIA: dict[str, type[Criterion]] = {
    c.name: c for c in (Magnitude, Taylor, Fisher, RandomScores)
}


def importance(
    model: PreTrainedModel, batches: Iterable[Batch], method: Method = "fisher", *, seed: int = 0
) -> Scores:
    """Score every head, neuron and prunable weight of ``model`` with ``method``.

    ``batches`` yields dicts of tensors with ``labels`` and the model's inputs; ``magnitude``
    and ``random`` ignore them. ``seed`` seeds ``random``.
    """
    if method not in CRITERIA:
        raise ValueError(f"unknown importance method {method!r}; choose one of {sorted(CRITERIA)}")
    criterion = RandomScores(seed=seed) if method == "random" else CRITERIA[method]()
    return criterion.score(model, batches)
