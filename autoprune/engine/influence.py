"""Block influence: how much each transformer layer changes the hidden states it is given.

Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You
Expect". A layer's block influence is ``1 - cos(x, f(x))``, the cosine similarity of its
input and output hidden states at one token, averaged over the real tokens of calibration
batches. A layer that barely turns its input scores near 0 and is the first to remove (depth
pruning, ``PruneConfig(layers=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.activations import real_tokens
from autoprune.engine.arch import family_of

Batch = Mapping[str, torch.Tensor]


def block_influence(model: PreTrainedModel, batches: Iterable[Batch]) -> torch.Tensor:
    """Each layer's block influence, ``(layers,)``, in ``[0, 2]``.

    Args:
        model: The model; its train/eval mode is the same on return.
        batches: Calibration batches of model inputs (no labels); padding, where the batch
            has an ``attention_mask``, is left out.

    Raises:
        ValueError: If ``batches`` holds no token.
    """
    layers = family_of(model).layers(model)
    similarity = torch.zeros(len(layers), dtype=torch.float64)  # summed over tokens
    tokens = 0
    mask: torch.Tensor | None = None
    inputs: dict[int, torch.Tensor] = {}

    def before(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def after(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            x = real_tokens(inputs.pop(index).float(), mask)  # (tokens, hidden)
            y = real_tokens(hidden.float(), mask)  # (tokens, hidden)
            similarity[index] += F.cosine_similarity(x, y, dim=-1).double().sum().cpu()

        return hook

    handles = [
        layer.register_forward_pre_hook(before(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    handles += [layer.register_forward_hook(after(i)) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                mask = batch.get("attention_mask")
                model(**batch)
                tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise ValueError("block_influence needs calibration tokens; none was given")
    return 1.0 - similarity / tokens


def least_influential(influence: Sequence[float] | torch.Tensor, remove: int) -> list[bool]:
    """Keep flags (``PruneConfig.layers``) that drop the ``remove`` layers of lowest
    influence (ties to the later layer, which sees the earlier ones' output).

    Raises:
        ValueError: If ``remove`` is negative or would leave no layer.
    """
    values = [float(v) for v in influence]
    if not 0 <= remove < len(values):
        raise ValueError(
            f"remove must be in [0, {len(values) - 1}] for a model of {len(values)} layers, "
            f"got {remove}"
        )
    order = sorted(range(len(values)), key=lambda i: (values[i], -i))
    dropped = set(order[:remove])
    return [i not in dropped for i in range(len(values))]
