"""The linear layers autoprune slices and masks: ``nn.Linear`` and GPT-2's ``Conv1D``.

``Conv1D`` computes the same map as ``nn.Linear`` but stores its weight transposed, as
``(in_features, out_features)``. The engine reads both through :func:`as_matrix`, which views
a weight-shaped tensor as ``(out_features, in_features)``: rows are outputs (and carry the
bias), columns are inputs, whatever the layer's class (a transpose is its own inverse, so
:func:`as_matrix` also turns an ``(out, in)`` tensor back into the weight's layout).
"""

from __future__ import annotations

import warnings
from typing import TypeAlias, TypeGuard

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

Projection: TypeAlias = nn.Linear | Conv1D


def is_projection(module: object) -> TypeGuard[Projection]:
    """Whether ``module`` is a layer autoprune can slice and mask."""
    return isinstance(module, nn.Linear | Conv1D)


def as_matrix(module: Projection, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, shaped like ``module.weight``, as ``(out_features, in_features)``.

    For a ``Conv1D`` this is a transposed view, so writing through it writes ``tensor``.
    """
    return tensor.t() if isinstance(module, Conv1D) else tensor


def matrix_shape(module: Projection) -> tuple[int, int]:
    """``(out_features, in_features)`` of ``module``."""
    out_features, in_features = as_matrix(module, module.weight).shape
    return out_features, in_features


def empty_projection(
    layer_class: type[Projection], like: Projection, in_features: int, out_features: int
) -> Projection:
    """An uninitialized ``layer_class`` (``nn.Linear``, ``Conv1D`` or a subclass) with
    ``like``'s device, dtype and bias (``Conv1D`` always has one); every tensor is to be copied
    in. Zero-width layers, which pruning makes, are allowed without a warning."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        if issubclass(layer_class, Conv1D):
            new: Projection = layer_class(out_features, in_features)
        else:
            new = layer_class(in_features, out_features, bias=like.bias is not None)
    return new.to_empty(device=like.weight.device).to(like.weight.dtype)


def conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What ``Conv1D`` computes, ``x @ weight + bias`` with ``weight`` ``(in, out)``, for any
    input width: with no input feature left the output is the bias."""
    flat = x.flatten(0, -2)  # (tokens, in)
    return torch.addmm(bias, flat, weight).view(*x.shape[:-1], weight.shape[1])  # (..., out)


class SlicedConv1D(Conv1D):
    """The ``Conv1D`` that sliced GPT-2 layers are made of: the same weights and outputs, and
    it also takes an input of width 0 (a block keeping no neuron), whose output is its bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv1d(x, self.weight, self.bias)
