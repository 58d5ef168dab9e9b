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
- ``activation``: from one forward pass over calibration data, no gradient: a head's
  (neuron's) mean output norm over tokens (Muralidharan et al. 2024, "Compact Language Models
  via Pruning and Knowledge Distillation", Minitron's width importance); ``|w|`` times the L2
  norm of its input feature per weight, compared within each output row (Sun et al. 2023, "A
  Simple and Effective Pruning Approach for Large Language Models", Wanda).
- ``random``: uniform random scores, the control.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar, Literal

import torch
from transformers import PreTrainedModel

from autoprune.engine.activations import FeatureSquares, InputRecorder
from autoprune.engine.arch import Architecture, describe, family_of
from autoprune.engine.gates import gated
from autoprune.engine.groups import LayerGroups, Unit
from autoprune.engine.projections import as_matrix, matrix_shape
from autoprune.engine.scores import Scores
from autoprune.engine.sparsity import effective_weight
from autoprune.engine.wanda import wanda_scores
from autoprune.progress import progress

Method = Literal["magnitude", "taylor", "fisher", "activation", "random"]
Batch = Mapping[str, torch.Tensor]
Loss = Callable[[PreTrainedModel, Batch], torch.Tensor]
"""``loss(model, batch)``: a scalar, the sum over the batch's examples of each one's loss."""


def batch_size(batch: Batch) -> int:
    """The number of examples in ``batch`` (the first dimension of its tensors)."""
    if not batch:
        raise ValueError("a batch holds no tensor")
    return len(next(iter(batch.values())))


def model_loss(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """The model's own loss on ``batch``, times the batch size, so a mean over examples
    becomes their sum. Hugging Face models compute it when the batch has ``labels``.

    Raises:
        ValueError: If the model computes no loss (no ``labels`` in the batch).
    """
    loss = model(**batch).loss
    if loss is None:
        raise ValueError(
            f"{type(model).__name__} computed no loss: give batches with 'labels' or pass loss="
        )
    return loss * batch_size(batch)


class Criterion(ABC):
    """An importance criterion: from a model (and data, where it needs it) to :class:`Scores`."""

    name: ClassVar[Method]

    @abstractmethod
    def score(self, model: PreTrainedModel, batches: Iterable[Batch], loss: Loss) -> Scores:
        """Scores for every head, neuron and prunable weight of ``model``.

        Criteria that need no data ignore ``batches`` and ``loss``.
        """


class Magnitude(Criterion):
    """Weight norms; needs no data."""

    name = "magnitude"

    def score(self, model: PreTrainedModel, batches: Iterable[Batch], loss: Loss) -> Scores:
        family = family_of(model)
        groups = family.groups(model)
        heads, neurons, weights = [], [], []
        with torch.no_grad():
            for layer in family.layers(model):
                linears = groups.linears(layer)
                w = {path: effective_weight(lin).float() for path, lin in linears.items()}
                heads.append(_grouped_norm(groups, w, "head").cpu())
                neurons.append(_grouped_norm(groups, w, "neuron").cpu())
                weights.append({path: t.abs().cpu() for path, t in w.items()})
        return Scores(self.name, heads, neurons, weights)


def _squared_norms(
    groups: LayerGroups, weights: Mapping[str, torch.Tensor], unit: Unit
) -> torch.Tensor:
    """Sum of squares of each unit's rows and columns over the layer's ``weights``, ``(units,)``
    (empty where none of the unit's matrices is left)."""
    parts = [s.squared_norms(weights[s.path]) for s in groups.slices(unit) if s.path in weights]
    return torch.stack(parts).sum(dim=0) if parts else torch.zeros(0)  # (units,)


def _grouped_norm(
    groups: LayerGroups, weights: Mapping[str, torch.Tensor], unit: Literal["head", "neuron"]
) -> torch.Tensor:
    """L2 norm of each head's (neuron's) rows and columns over the layer's matrices, ``(units,)``.

    A head also carries an even share of its key/value group's rows (all of them without
    grouped-query attention), so heads of a weightier group score higher.
    """
    total = _squared_norms(groups, weights, unit)  # (units,)
    if unit == "head":
        shared = _squared_norms(groups, weights, "kv")  # (kv_heads,)
        if len(shared) > 0:
            group_size = len(total) // len(shared)
            total = total + (shared / group_size).repeat_interleave(group_size)  # (heads,)
    return total.sqrt()


def unit_gates(
    arch: Architecture, size: int, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gates of ones for :func:`autoprune.engine.gates.gated`, one row per example (so a
    summed loss gives per-example gradients): ``(size, heads)`` and ``(size, ffn)`` per layer."""
    heads = [torch.ones(size, n, device=device, requires_grad=True) for n in arch.heads]
    neurons = [torch.ones(size, n, device=device, requires_grad=True) for n in arch.ffn]
    return heads, neurons


def _gradients(total: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of ``total`` with respect to each of ``inputs``; zeros for an input it
    does not depend on (a layer whose output the loss never reads)."""
    raw = torch.autograd.grad(total, inputs, allow_unused=True)
    return [g if g is not None else torch.zeros_like(t) for g, t in zip(raw, inputs, strict=True)]


def gate_gradients(model: PreTrainedModel, batches: Iterable[Batch], loss: Loss) -> torch.Tensor:
    """Per example of ``batches``, the gradient of its own loss with respect to the gate of
    every query head and every neuron at 1 (the model as it is), ``(examples, units)``: the
    heads of layer 0, 1, ... and then the neurons of layer 0, 1, ...

    Raises:
        ValueError: If ``batches`` holds no example.
    """
    arch = describe(model)
    device = next(model.parameters()).device
    rows = []
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            head_gates, neuron_gates = unit_gates(arch, batch_size(batch), device)
            with gated(model, head_gates, neuron_gates):
                total = loss(model, batch)  # summed over the batch's examples
            grads = _gradients(total, [*head_gates, *neuron_gates])
            rows.append(torch.cat(grads, dim=1).detach().cpu())  # (batch, units)
    finally:
        model.train(was_training)
    if not rows:
        raise ValueError("gate gradients need data: no batch was given")
    return torch.cat(rows)  # (examples, units)


class _GateGradient(Criterion):
    """Shared loop of the gradient criteria: per-example gate gradients, per-batch weight ones."""

    @staticmethod
    @abstractmethod
    def reduce(gradient: torch.Tensor) -> torch.Tensor:
        """How one gradient contributes to a score (absolute value, square)."""

    def score(self, model: PreTrainedModel, batches: Iterable[Batch], loss: Loss) -> Scores:
        family = family_of(model)
        groups = family.groups(model)
        arch = describe(model)
        device = next(model.parameters()).device
        linears = [groups.linears(layer) for layer in family.layers(model)]
        heads = [torch.zeros(n) for n in arch.heads]
        neurons = [torch.zeros(n) for n in arch.ffn]
        weights = [{p: torch.zeros(matrix_shape(lin)) for p, lin in ls.items()} for ls in linears]
        params = [lin.weight for ls in linears for lin in ls.values()]
        seen = 0
        was_training = model.training
        model.eval()
        try:
            for batch in progress(batches, f"importance ({self.name})"):
                batch = {k: v.to(device) for k, v in batch.items()}
                size = batch_size(batch)
                head_gates, neuron_gates = unit_gates(arch, size, device)
                with gated(model, head_gates, neuron_gates):
                    total = loss(model, batch)  # summed over the batch's examples
                grads = _gradients(total, [*head_gates, *neuron_gates, *params])
                n_layers = arch.num_layers
                for i in range(n_layers):
                    heads[i] += self.reduce(grads[i]).sum(dim=0).cpu()  # (heads,)
                    neurons[i] += self.reduce(grads[n_layers + i]).sum(dim=0).cpu()  # (ffn,)
                weight_grads = iter(grads[2 * n_layers :])
                for i, ls in enumerate(linears):
                    for path, lin in ls.items():
                        gradient = as_matrix(lin, next(weight_grads))  # (out, in)
                        taylor = effective_weight(lin).detach() * gradient
                        weights[i][path] += self.reduce(taylor).cpu()  # (out, in)
                seen += size
        finally:
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


class Activation(Criterion):
    """Activation norms over calibration data (Minitron for units, Wanda for weights).

    A head scores the mean over real tokens of the L2 norm of its output (its ``head_dim``
    inputs to the attention output projection), a neuron the mean of the absolute value of
    its activation (its input to the feed-forward output projection). A weight scores ``|w|``
    times the L2 norm over real tokens of its input feature; the scores are compared within
    each output row (``Scores.scope == "row"``), as Wanda prunes. Scores rank units within a
    kind (heads, neurons), not across kinds. ``loss`` is only run for its forward pass.
    """

    name = "activation"

    def score(self, model: PreTrainedModel, batches: Iterable[Batch], loss: Loss) -> Scores:
        family = family_of(model)
        groups = family.groups(model)
        readers = {groups.gate(unit).path: groups.gate(unit) for unit in ("head", "neuron")}
        linears = [groups.linears(layer) for layer in family.layers(model)]
        squares = FeatureSquares[tuple[int, str]]()
        norms: dict[tuple[int, str], torch.Tensor] = {}  # per unit, summed over tokens

        def record(key: tuple[int, str], inputs: torch.Tensor) -> None:
            squares(key, inputs)
            if key[1] in readers:
                width = readers[key[1]].width
                shape = (len(inputs), inputs.shape[1] // width, width)
                units = inputs.float().view(shape)  # (tokens, units, width)
                found = units.norm(dim=-1).sum(dim=0)  # (units,)
                norms[key] = norms[key] + found if key in norms else found

        modules = {(i, p): lin for i, ls in enumerate(linears) for p, lin in ls.items()}
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with InputRecorder(modules, record) as recorder, torch.no_grad():
                for batch in progress(batches, f"importance ({self.name})"):
                    batch = {k: v.to(device) for k, v in batch.items()}
                    recorder.mask = batch.get("attention_mask")
                    loss(model, batch)
        finally:
            model.train(was_training)
        if not squares.tokens:
            raise ValueError(f"importance ({self.name}) needs data: no batch was given")
        arch = describe(model)

        def mean_norms(layer: int, unit: Literal["head", "neuron"], count: int) -> torch.Tensor:
            key = (layer, groups.gate(unit).path)
            if key not in norms:
                return torch.zeros(count)
            return (norms[key] / max(squares.tokens[key], 1)).cpu()  # (units,)

        heads = [mean_norms(i, "head", n) for i, n in enumerate(arch.heads)]
        neurons = [mean_norms(i, "neuron", n) for i, n in enumerate(arch.ffn)]
        weights = [
            {p: wanda_scores(lin, squares.sums[(i, p)]).cpu() for p, lin in ls.items()}
            for i, ls in enumerate(linears)
        ]
        return Scores(self.name, heads, neurons, weights, scope="row")


class RandomScores(Criterion):
    """Uniform random scores from a generator seeded with 0 (the same every time); the control."""

    name = "random"

    def score(self, model: PreTrainedModel, batches: Iterable[Batch], loss: Loss) -> Scores:
        family = family_of(model)
        groups = family.groups(model)
        arch = describe(model)
        generator = torch.Generator().manual_seed(0)
        heads = [torch.rand(n, generator=generator) for n in arch.heads]
        neurons = [torch.rand(n, generator=generator) for n in arch.ffn]
        weights = [
            {
                p: torch.rand(matrix_shape(lin), generator=generator)
                for p, lin in groups.linears(layer).items()
            }
            for layer in family.layers(model)
        ]
        return Scores(self.name, heads, neurons, weights)


CRITERIA: dict[Method, type[Criterion]] = {
    c.name: c for c in (Magnitude, Taylor, Fisher, Activation, RandomScores)
}


def importance(
    model: PreTrainedModel,
    batches: Iterable[Batch],
    method: Method = "fisher",
    *,
    loss: Loss = model_loss,
) -> Scores:
    """Score every head, neuron and prunable weight of ``model`` with ``method``.

    Args:
        model: The model to score; its train/eval mode is the same on return.
        batches: Dicts of tensors that ``loss`` reads (by default the model's inputs and
            ``labels``); ``magnitude`` and ``random`` ignore them.
        method: The criterion.
        loss: ``loss(model, batch)``, the batch's loss summed over its examples, for the
            gradient criteria. The default, :func:`model_loss`, is the model's own loss, so
            the engine assumes no task.

    Raises:
        ValueError: For an unknown method, or a gradient criterion given no batch.
    """
    if method not in CRITERIA:
        raise ValueError(f"unknown importance method {method!r}; choose one of {sorted(CRITERIA)}")
    return CRITERIA[method]().score(model, batches, loss)
