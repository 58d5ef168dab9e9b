"""Unstructured sparsity: linear layers whose masked weights stay exactly zero.

A :class:`MaskedLinear` multiplies its weight by a fixed 0/1 mask in every forward pass, so
the gradient of a masked weight is zero and no optimizer step can move it: zeros stay zeros
through retraining, with any optimizer. :func:`bake` turns masked layers back into plain
``nn.Linear`` layers whose weights hold the zeros, for saving.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init


def empty_linear(
    layer_class: type[nn.Linear], like: nn.Linear, in_features: int, out_features: int
) -> nn.Linear:
    """An uninitialized ``layer_class`` on ``like``'s device and dtype (every tensor is to be
    copied in). Zero-width layers, which pruning makes, are allowed without a warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        return skip_init(
            layer_class,
            in_features,
            out_features,
            bias=like.bias is not None,
            device=like.weight.device,
            dtype=like.weight.dtype,
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

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor) -> MaskedLinear:
        """A masked copy of ``linear`` whose masked weights are set to zero.

        A ``linear`` that is already masked keeps its own zeros as well.
        """
        if isinstance(linear, MaskedLinear):
            mask = mask.to(linear.mask.device) * linear.mask
        masked = cast(
            MaskedLinear, empty_linear(cls, linear, linear.in_features, linear.out_features)
        )
        with torch.no_grad():
            masked.mask.copy_(mask)
            masked.weight.copy_(linear.weight * mask)
            if linear.bias is not None:
                masked.bias.copy_(linear.bias)
        return masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def lowest_scored_masks(
    scores: Mapping[str, torch.Tensor], sparsity: float
) -> dict[str, torch.Tensor]:
    """0/1 masks zeroing exactly ``round(sparsity * n)`` of the ``n`` weights, lowest scores first.

    The weights of all the given matrices compete together (one threshold per layer), so a
    matrix whose weights matter less gives up more of them.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    masks = {name: torch.ones_like(s, dtype=torch.float32) for name, s in scores.items()}
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


def effective_weight(linear: nn.Linear) -> torch.Tensor:
    """The weight the layer computes with (masked where the layer is masked)."""
    if isinstance(linear, MaskedLinear):
        return linear.weight * linear.mask
    return linear.weight


def bake(model: nn.Module) -> nn.Module:
    """Replace every :class:`MaskedLinear` in ``model`` by a plain ``nn.Linear`` (in place).

    The returned model computes the same function; its zeros are in the weights.
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, MaskedLinear):
            continue
        plain = empty_linear(nn.Linear, module, module.in_features, module.out_features)
        with torch.no_grad():
            plain.weight.copy_(effective_weight(module))
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        model.set_submodule(name, plain)
    return model
