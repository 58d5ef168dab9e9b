"""Recovery without retraining: refit what pruning kept so each block reproduces the dense one.

Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (mask tuning: the
masks of the kept heads and neurons are refit layer by layer by linear least squares), with
the bias compensation of An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for
Large Language Models" (FLAP: the mean of what the removed units contributed goes into the
output projection's bias).

A block is a layer's attention or its feed-forward part. Its output projection (the column
slice of the family's head or neuron group, :meth:`LayerGroups.gate`) computes
``y = sum_u W_u x_u + b``, one term per kept unit ``u`` (``W_u`` its columns, ``x_u`` its
part of the input). Block by block, first to last, :func:`recover` finds one scale ``s_u``
per kept unit and a new bias ``b'`` minimising, over the calibration tokens,

    || y_dense - (sum_u s_u W_u x_u + b') ||^2  +  lam * ||s - 1||^2

and folds ``s`` into ``W``'s columns and ``b'`` into the bias (a projection without a bias
keeps none and fits ``s`` alone). ``y_dense`` is the dense model's projection output; ``x`` is
the pruned model's own input to the projection, every earlier block already refit, so each
block is fitted to the inputs it will really receive rather than dense inputs it never sees.
The target is the projection's output, not the residual sum it is added to: drift that the
residual stream carries from earlier blocks is not corrected here. The ridge term pulls
towards the unscaled model (``s = 1``), never towards removing a unit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.activations import real_tokens
from autoprune.engine.arch import describe, family_of
from autoprune.engine.projections import Projection, as_matrix, is_projection
from autoprune.engine.sparsity import effective_weight

Batch = Mapping[str, torch.Tensor]
Block = Literal["head", "neuron"]
"""A block, named by the units its output projection reads: attention (``head``) or
feed-forward (``neuron``)."""
BLOCKS: tuple[Block, ...] = ("head", "neuron")


def _forward(model: PreTrainedModel, batch: Batch) -> None:
    device = next(model.parameters()).device
    model(**{k: v.to(device) for k, v in batch.items()})


def projection(model: PreTrainedModel, layer: int, block: Block) -> Projection:
    """The output projection of ``block`` in transformer layer ``layer`` of ``model``."""
    family = family_of(model)
    path = family.groups(model).gate(block).path
    linear = family.layers(model)[layer].get_submodule(path)
    if not is_projection(linear):
        raise TypeError(f"layer {layer}: {path} is a {type(linear).__name__}, not a projection")
    return linear


def _block_outputs(model: PreTrainedModel, batches: Iterable[Batch]) -> list[list[torch.Tensor]]:
    """Every block's projection output on every batch's real tokens: ``found[2 * layer + b]``
    (``b`` the block's index in :data:`BLOCKS`) holds one ``(tokens, hidden)`` per batch."""
    num_layers = describe(model).num_layers
    found: list[list[torch.Tensor]] = [[] for _ in range(2 * num_layers)]
    current: list[Batch] = []

    def keeper(index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            mask = current[-1].get("attention_mask")
            found[index].append(real_tokens(out.detach(), mask))  # (tokens, hidden)

        return hook

    handles = [
        projection(model, layer, block).register_forward_hook(keeper(2 * layer + b))
        for layer in range(num_layers)
        for b, block in enumerate(BLOCKS)
    ]
    try:
        with torch.no_grad():
            for batch in batches:
                current.append(batch)
                _forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return found


class _Reached(Exception):
    """Raised by a hook once it holds the input it waited for: the rest of the pass is moot."""


def _block_inputs(
    model: PreTrainedModel, layer: int, block: Block, batches: Iterable[Batch]
) -> list[torch.Tensor]:
    """The input of ``block``'s projection in ``layer`` on each batch's real tokens,
    ``(tokens, units * width)`` per batch; each forward pass stops there."""
    found: list[torch.Tensor] = []
    current: list[Batch] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        mask = current[-1].get("attention_mask")
        found.append(real_tokens(inputs[0].detach(), mask))  # (tokens, units * width)
        raise _Reached

    handle = projection(model, layer, block).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for batch in batches:
                current.append(batch)
                with suppress(_Reached):
                    _forward(model, batch)
    finally:
        handle.remove()
    return found


@dataclass(frozen=True)
class Calibration:
    """Calibration batches and the dense model's block outputs on them, recorded once and
    reused for every candidate refit against the same dense model.

    Attributes:
        batches: The model inputs (no labels), as given.
        targets: For every block, ``targets[2 * layer + b]`` (``b`` its index in
            :data:`BLOCKS`), the dense projection's output on each batch's real tokens,
            ``(tokens, hidden)`` per batch, on the dense model's device.
    """

    batches: tuple[Batch, ...]
    targets: tuple[tuple[torch.Tensor, ...], ...]

    @classmethod
    def record(cls, dense: PreTrainedModel, batches: Iterable[Batch]) -> Calibration:
        """Run ``dense`` once over ``batches`` (model inputs only) and keep its block outputs.

        Raises:
            ValueError: If ``batches`` is empty or holds no real token.
        """
        kept = tuple(batches)
        if not kept:
            raise ValueError("batches: recovery needs at least one calibration batch")
        targets = tuple(tuple(outputs) for outputs in _block_outputs(dense, kept))
        if sum(len(t) for t in targets[0]) == 0:
            raise ValueError("batches: the calibration batches hold no real token")
        return cls(kept, targets)

    @property
    def num_layers(self) -> int:
        return len(self.targets) // 2

    def target(self, layer: int, block: Block) -> tuple[torch.Tensor, ...]:
        """The dense output of ``block``'s projection in ``layer``: ``(tokens, hidden)`` per
        batch."""
        return self.targets[2 * layer + BLOCKS.index(block)]


def _refit(
    linear: Projection,
    width: int,
    inputs: list[torch.Tensor],
    targets: tuple[torch.Tensor, ...],
    ridge: float,
) -> None:
    """Scale ``linear``'s ``width``-column units and reset its bias (in place) to the ridge
    least-squares fit of ``targets`` from ``inputs`` (see the module's docstring)."""
    weight = effective_weight(linear).detach().double()  # (hidden, units * width)
    hidden, columns = weight.shape
    units = columns // width
    xx = weight.new_zeros(columns, columns)
    yx = weight.new_zeros(hidden, columns)
    x_sum, y_sum, n = weight.new_zeros(columns), weight.new_zeros(hidden), 0
    for x, y in zip(inputs, targets, strict=True):
        x = x.double()  # (tokens, units * width)
        y = y.to(x.device).double()  # (tokens, hidden)
        xx += x.T @ x
        yx += y.T @ x
        x_sum += x.sum(dim=0)
        y_sum += y.sum(dim=0)
        n += x.shape[0]
    x_mean, y_mean = x_sum / n, y_sum / n
    if linear.bias is not None:  # the bias is free: fit the centred problem
        xx -= n * torch.outer(x_mean, x_mean)
        yx -= n * torch.outer(y_mean, x_mean)
    # gram[u, v] = sum over tokens of <W_u x_u, W_v x_v>; cross[u] = sum of <y, W_u x_u>
    gram = (xx * (weight.T @ weight)).view(units, width, units, width).sum(dim=(1, 3))
    cross = (yx * weight).view(hidden, units, width).sum(dim=(0, 2))  # (units,)
    scale = torch.ones(units, dtype=torch.float64, device=weight.device)  # (units,)
    if units:
        lam = ridge * gram.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
        eye = torch.eye(units, dtype=torch.float64, device=weight.device)
        scale = torch.linalg.solve(gram + lam * eye, cross + lam)  # (units,)
    columns_scale = scale.repeat_interleave(width)  # (units * width,)
    with torch.no_grad():
        as_matrix(linear, linear.weight).mul_(columns_scale.to(linear.weight.dtype))
        if linear.bias is not None:
            bias = y_mean - weight @ (columns_scale * x_mean)  # (hidden,)
            linear.bias.copy_(bias.to(linear.bias.dtype))


def recover(
    pruned: PreTrainedModel,
    calibration: Calibration,
    *,
    ridge: float = 1e-3,
    kept: Sequence[bool] | None = None,
) -> PreTrainedModel:
    """Refit ``pruned`` (in place) so each block reproduces the dense model's block output.

    Kwon et al. 2022 (layer-wise least-squares rescaling of the kept heads and neurons) with
    FLAP's bias compensation (An et al. 2024); see the module's docstring for the problem
    solved. Shapes, masks and which units are kept do not change, so the model saves and
    loads like any pruned model.

    Guarantees: for every block, on the calibration tokens and with the inputs the block
    receives in the returned model, the squared error of its projection's output against the
    dense one is no larger than with the projection it had before (the ridge problem's
    optimum is no worse than its unscaled point, ``s = 1`` with the old bias).

    Args:
        pruned: A pruned copy of the model ``calibration`` was recorded on.
        calibration: The calibration batches and the dense block outputs.
        ridge: The ridge weight towards ``s = 1``, relative to the mean diagonal of the
            problem's Gram matrix; > 0.
        kept: Which dense layers ``pruned`` kept (depth pruning), or None for all: each kept
            layer's blocks are fit to the dense outputs of the layer it was.

    Returns:
        ``pruned`` itself.

    Raises:
        ValueError: If ``ridge`` is not positive, or ``pruned``'s layers are not the dense
            model's (or its ``kept`` ones).
    """
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    family = family_of(pruned)
    sources = _sources(pruned, calibration, kept)
    groups = family.groups(pruned)
    for layer, source in enumerate(sources):
        for block in BLOCKS:
            inputs = _block_inputs(pruned, layer, block, calibration.batches)
            linear = projection(pruned, layer, block)
            targets = calibration.target(source, block)
            _refit(linear, groups.gate(block).width, inputs, targets, ridge)
    return pruned


def _sources(
    pruned: PreTrainedModel, calibration: Calibration, kept: Sequence[bool] | None
) -> list[int]:
    """For each layer of ``pruned``, the index of the dense layer it was (the ``kept`` ones,
    or every layer for None), checked against the calibration's dense model."""
    if kept is not None and len(kept) != calibration.num_layers:
        raise ValueError(
            f"kept has {len(kept)} flags, the calibration's dense model "
            f"{calibration.num_layers} layers"
        )
    num_layers = describe(pruned).num_layers
    if kept is None and num_layers != calibration.num_layers:
        raise ValueError(
            f"pruned has {num_layers} layers, the calibration's dense model "
            f"{calibration.num_layers}"
        )
    sources = list(range(num_layers)) if kept is None else [i for i, k in enumerate(kept) if k]
    if len(sources) != num_layers:
        raise ValueError(
            f"pruned has {num_layers} layers, the kept-layer flags keep {len(sources)}"
        )
    return sources


def reconstruction_errors(
    model: PreTrainedModel, calibration: Calibration, kept: Sequence[bool] | None = None
) -> list[dict[Block, float]]:
    """Per layer of ``model`` and block, the squared error of its projection output against
    the dense one (of the dense layer it was, for ``kept`` flags) on the calibration tokens,
    relative to the dense output's sum of squares."""
    outputs = _block_outputs(model, calibration.batches)
    errors: list[dict[Block, float]] = []
    for layer, source in enumerate(_sources(model, calibration, kept)):
        errors.append({})
        for b, block in enumerate(BLOCKS):
            pairs = zip(outputs[2 * layer + b], calibration.target(source, block), strict=True)
            squared, reference = 0.0, 0.0
            for y, dense in pairs:
                dense = dense.to(y.device).double()  # (tokens, hidden)
                squared += float((y.double() - dense).pow(2).sum())
                reference += float(dense.pow(2).sum())
            errors[layer][block] = squared / reference
    return errors
