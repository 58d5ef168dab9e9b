"""Unstructured sparsity: linear layers whose masked weights stay exactly zero.

A masked layer (:class:`MaskedLinear`, :class:`MaskedConv1D`) multiplies its weight by a
fixed 0/1 mask in every forward pass, so the gradient of a masked weight is zero and no
optimizer step can move it: zeros stay zeros through retraining, with any optimizer.
:func:`bake` turns masked layers back into plain ones whose weights hold the zeros, for
saving.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from autoprune.engine.projections import (
    Projection,
    SlicedConv1D,
    as_matrix,
    conv1d,
    empty_projection,
    matrix_shape,
)


class MaskedLinear(nn.Linear):
    """A linear layer computing ``x @ (weight * mask).T + bias``; the mask is a buffer."""

    mask: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("mask", torch.ones_like(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MaskedConv1D(SlicedConv1D):
    """GPT-2's ``Conv1D`` computing ``x @ (weight * mask) + bias``; the mask is a buffer
    shaped like the weight, ``(in_features, out_features)``."""

    mask: torch.Tensor

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__(nf, nx)
        self.register_buffer("mask", torch.ones_like(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv1d(x, self.weight * self.mask, self.bias)


Masked = MaskedLinear | MaskedConv1D


def masked(layer: Projection, mask: torch.Tensor) -> Masked:
    """A masked copy of ``layer`` whose weights where ``mask`` (``(out_features,
    in_features)``, 0/1) is 0 are set to zero. A ``layer`` that is already masked keeps its
    own zeros as well."""
    layer_class = MaskedConv1D if isinstance(layer, Conv1D) else MaskedLinear
    out_features, in_features = matrix_shape(layer)
    new = cast(Masked, empty_projection(layer_class, layer, in_features, out_features))
    native = as_matrix(layer, mask.to(layer.weight.device)).to(new.mask.dtype)  # weight-shaped
    if isinstance(layer, Masked):
        native = native * layer.mask
    with torch.no_grad():
        new.mask.copy_(native)
        new.weight.copy_(layer.weight * native)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


Scope = Literal["layer", "row"]
"""Which weights compete for a layer's sparsity: all of the layer's prunable weights together
(``layer``: a matrix whose weights matter less gives up more of them), or those of each output
row of each matrix (``row``, Wanda's comparison group: every row gives up the same share)."""


def lowest_scored_masks(
    scores: Mapping[str, torch.Tensor], sparsity: float, scope: Scope = "layer"
) -> dict[str, torch.Tensor]:
    """0/1 masks zeroing the lowest-scored weights of ``(out, in)`` score matrices.

    With ``scope="layer"`` exactly ``round(sparsity * n)`` of all ``n`` weights are zeroed
    (one threshold for the layer); with ``scope="row"`` exactly ``round(sparsity * in)`` in
    every row of every matrix.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    masks = {name: torch.ones_like(s, dtype=torch.float32) for name, s in scores.items()}
    if scope == "row":
        for name, s in scores.items():
            lowest = torch.topk(s.float(), round(sparsity * s.shape[1]), dim=1, largest=False)
            masks[name].scatter_(1, lowest.indices, 0.0)  # (out, in)
        return masks
    if not scores:
        return masks
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    n_zero = round(sparsity * flat.numel())
    if n_zero == 0:
        return masks
    dropped = torch.topk(flat, n_zero, largest=False).indices
    keep = torch.ones_like(flat)
    keep[dropped] = 0.0
    start = 0
    for name, s in scores.items():
        masks[name] = keep[start : start + s.numel()].reshape(s.shape)
        start += s.numel()
    return masks


def effective_weight(layer: Projection) -> torch.Tensor:
    """The weight the layer computes with (masked where the layer is masked), as
    ``(out_features, in_features)``."""
    weight = layer.weight * layer.mask if isinstance(layer, Masked) else layer.weight
    return as_matrix(layer, weight)  # (out, in)


def bake(model: nn.Module) -> nn.Module:
    """Replace every masked layer in ``model`` by a plain ``nn.Linear`` or
    :class:`SlicedConv1D` (in place).

    The returned model computes the same function; its zeros are in the weights.
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, Masked):
            continue
        plain_class = SlicedConv1D if isinstance(module, Conv1D) else nn.Linear
        out_features, in_features = matrix_shape(module)
        plain = empty_projection(plain_class, module, in_features, out_features)
        with torch.no_grad():
            plain.weight.copy_(module.weight * module.mask)
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        model.set_submodule(name, plain)
    return model
