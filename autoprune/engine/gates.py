"""Gates on attention heads and feed-forward neurons.

A gate multiplies one head's (or one neuron's) contribution to the layer's output. Gating
is done with forward pre-hooks on the projections that read the heads (the attention output
projection) and the neurons (the second feed-forward projection), so it works for every
family without touching its modules. Importance criteria differentiate through gates; tests
use them as the reference for what physical pruning must compute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.arch import describe, family_of

Hook = Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


def _scale_heads(gate: torch.Tensor, head_dim: int) -> Hook:
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        hidden = inputs[0]  # (batch, seq, heads * head_dim)
        batch, seq, width = hidden.shape
        heads = hidden.view(batch, seq, width // head_dim, head_dim)
        g = gate.view(-1, 1, width // head_dim, 1)  # (1 or batch, 1, heads, 1)
        return ((heads * g).view(batch, seq, width), *inputs[1:])

    return hook


def _scale_neurons(gate: torch.Tensor) -> Hook:
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        hidden = inputs[0]  # (batch, seq, ffn)
        return (hidden * gate.view(-1, 1, hidden.shape[-1]), *inputs[1:])

    return hook


@contextmanager
def gated(
    model: PreTrainedModel,
    head_gates: Sequence[torch.Tensor],
    neuron_gates: Sequence[torch.Tensor],
) -> Iterator[None]:
    """Within the block, scale each head and neuron of ``model`` by its gate.

    ``head_gates[l]`` has shape ``(heads,)`` or ``(batch, heads)``; ``neuron_gates[l]`` has
    shape ``(ffn,)`` or ``(batch, ffn)``. A batch dimension gives every example its own
    gates, so the gradient of a summed loss is a per-example gradient. The hooks are removed
    on exit, whatever happens inside.
    """
    family = family_of(model)
    head_dim = describe(model).head_dim
    handles = []
    try:
        for layer, head_gate, neuron_gate in zip(
            family.layers(model), head_gates, neuron_gates, strict=True
        ):
            handles.append(
                family.attention_out(layer).register_forward_pre_hook(
                    _scale_heads(head_gate, head_dim)
                )
            )
            handles.append(
                family.ffn_out(layer).register_forward_pre_hook(_scale_neurons(neuron_gate))
            )
        yield
    finally:
        for handle in handles:
            handle.remove()
