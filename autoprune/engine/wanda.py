"""Wanda, layer by layer: unstructured sparsity from weights and the activations they see.

Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models". A
weight scores ``|w| * ||x||``, ``x`` its input feature over the calibration tokens, and each
output row of each projection loses its lowest-scored weights. As in the paper's code, the
layers are made sparse one after the other, each on the inputs that the layers before it,
already sparse, give it: the calibration batches run through the model once to the first
layer, then through one layer at a time.

:class:`autoprune.engine.importance.Activation` gives the same weight scores from the dense
model alone (one pass, every layer on dense inputs), which :func:`autoprune.prune` applies to
any plan; :func:`sparsify` is the paper's sequential method for a plan of sparsity only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.activations import FeatureSquares, InputRecorder
from autoprune.engine.arch import family_of
from autoprune.engine.projections import Projection
from autoprune.engine.sparsity import effective_weight, lowest_scored_masks, masked

Batch = Mapping[str, torch.Tensor]
Call = tuple[tuple[Any, ...], dict[str, Any]]
"""The positional and keyword arguments of one call of a transformer layer."""


def wanda_scores(linear: Projection, squares: torch.Tensor) -> torch.Tensor:
    """``|w| * ||x||`` for every weight of ``linear``, ``(out, in)``, from ``squares``, the sum
    over the calibration tokens of each input feature's square, ``(in,)``."""
    weight = effective_weight(linear).detach().abs().float()  # (out, in)
    return weight * squares.to(weight.device).sqrt()[None, :]  # (out, in)


class _Reached(Exception):
    """Raised by the hook on the first layer once it holds its input: the rest is moot."""


def _first_layer_calls(model: PreTrainedModel, batches: Sequence[Batch]) -> list[Call]:
    """The arguments the first transformer layer is called with on each batch."""
    first = family_of(model).layers(model)[0]
    calls: list[Call] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((args, kwargs))
        raise _Reached

    device = next(model.parameters()).device
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            with suppress(_Reached):
                model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
    finally:
        handle.remove()
    return calls


def _with_hidden(call: Call, hidden: torch.Tensor) -> Call:
    """``call`` with its hidden states (the first positional argument, or ``hidden_states``)
    replaced by ``hidden``."""
    args, kwargs = call
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _feature_squares(
    layer: nn.Module,
    linears: Mapping[str, nn.Module],
    calls: Sequence[Call],
    masks: Sequence[torch.Tensor | None],
) -> FeatureSquares[str]:
    """The squared inputs of ``layer``'s projections over the calibration calls."""
    squares = FeatureSquares[str]()
    with InputRecorder(linears, squares) as recorder:
        for (args, kwargs), mask in zip(calls, masks, strict=True):
            recorder.mask = mask
            layer(*args, **kwargs)
    return squares


def sparsify(
    model: PreTrainedModel, batches: Sequence[Batch], sparsity: Sequence[float]
) -> PreTrainedModel:
    """A copy of ``model`` in which layer ``l`` has ``round(sparsity[l] * in)`` weights zeroed
    in every row of each of its prunable projections, chosen by Wanda layer by layer; the
    zeros are held by masks, as :func:`autoprune.prune` holds them. ``model`` is untouched.

    Args:
        model: The model (dense, or pruned already) to make sparse.
        batches: Calibration batches of model inputs (no labels).
        sparsity: Per layer of ``model``, the fraction of each row to zero, in ``[0, 1)``.

    Raises:
        ValueError: If ``sparsity`` has not one entry per layer, or ``batches`` is empty.
    """
    family = family_of(model)
    layers = family.layers(model)
    if len(sparsity) != len(layers):
        raise ValueError(f"sparsity: {len(sparsity)} entries for a model of {len(layers)} layers")
    if not batches:
        raise ValueError("sparsify needs calibration batches; none was given")
    sparse = copy.deepcopy(model).eval()
    groups = family.groups(sparse)
    masks = [batch.get("attention_mask") for batch in batches]
    with torch.no_grad():
        calls = _first_layer_calls(sparse, batches)
        for layer, ratio in zip(family.layers(sparse), sparsity, strict=True):
            if ratio > 0:
                linears = groups.linears(layer)
                squares = _feature_squares(layer, linears, calls, masks)
                scores = {
                    path: wanda_scores(lin, squares.sums[path]) for path, lin in linears.items()
                }
                for path, mask in lowest_scored_masks(scores, ratio, "row").items():
                    layer.set_submodule(path, masked(linears[path], mask))
            outputs = [layer(*args, **kwargs) for args, kwargs in calls]
            calls = [
                _with_hidden(call, out[0] if isinstance(out, tuple) else out)
                for call, out in zip(calls, outputs, strict=True)
            ]
    return sparse
