"""Gates on attention heads and feed-forward neurons.

A gate multiplies one head's (or one neuron's) contribution to the layer's output. Gating
is done with forward pre-hooks on the projection whose input columns are the units (the
column slice of the family's head and neuron groups, :meth:`LayerGroups.gate`), so it works
for every family without touching its modules. Importance criteria differentiate through
gates; tests use them as the reference for what physical pruning must compute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.arch import family_of

Hook = Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


def _scale_units(gate: torch.Tensor, width: int) -> Hook:
    """A pre-hook scaling each ``width``-column unit of the module's input by its gate."""

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        hidden = inputs[0]  # (batch, seq, units * width)
        batch, seq, columns = hidden.shape
        units = hidden.view(batch, seq, columns // width, width)  # (batch, seq, units, width)
        g = gate.view(-1, 1, columns // width, 1)  # (1 or batch, 1, units, 1)
        return ((units * g).view(batch, seq, columns), *inputs[1:])

    return hook


@contextmanager
def gated(
    model: PreTrainedModel,
    head_gates: Sequence[torch.Tensor],
    neuron_gates: Sequence[torch.Tensor],
) -> Iterator[None]:
    """Within the block, scale each query head and neuron of ``model`` by its gate.

    ``head_gates[l]`` has shape ``(heads,)`` or ``(batch, heads)``; ``neuron_gates[l]`` has
    shape ``(ffn,)`` or ``(batch, ffn)``. A batch dimension gives every example its own
    gates, so the gradient of a summed loss is a per-example gradient. A zero gate computes
    what removing the unit computes (a key/value group whose query heads are all gated off
    contributes nothing). The hooks are removed on exit, whatever happens inside.
    """
    family = family_of(model)
    groups = family.groups(model)
    readers = (groups.gate("head"), groups.gate("neuron"))
    handles = []
    try:
        for layer, head_gate, neuron_gate in zip(
            family.layers(model), head_gates, neuron_gates, strict=True
        ):
            for reader, gate in zip(readers, (head_gate, neuron_gate), strict=True):
                hook = _scale_units(gate, reader.width)
                handles.append(layer.get_submodule(reader.path).register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
