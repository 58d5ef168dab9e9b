"""What flows into a model's projections: their inputs at real tokens, read with hooks.

Activation-based importance (:class:`autoprune.engine.importance.Activation`) and Wanda's
layer-by-layer sparsity (:mod:`autoprune.engine.wanda`) read the inputs of the prunable
projections over calibration batches; :class:`InputRecorder` hands each of them over, padding
left out, and :class:`FeatureSquares` sums what Wanda's scores need.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from types import TracebackType
from typing import Generic, TypeVar

import torch
from torch import nn

Key = TypeVar("Key", bound=Hashable)


def real_tokens(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of ``hidden`` ``(batch, seq, features)`` at real tokens (``mask``, ``(batch,
    seq)``, is 1 there; None: every token), padding dropped: ``(tokens, features)``."""
    if mask is None:
        return hidden.reshape(-1, hidden.shape[-1])  # (batch * seq, features)
    return hidden[mask.to(hidden.device).bool()]  # (tokens, features)


class InputRecorder(Generic[Key]):
    """While open, every call of a module of ``modules`` passes its input at real tokens,
    ``(tokens, features)`` and detached, to ``record(key, input)``.

    Set :attr:`mask` to the attention mask of the batch about to run (None: no padding). The
    hooks are removed on exit, whatever happens inside.
    """

    def __init__(
        self,
        modules: Mapping[Key, nn.Module],
        record: Callable[[Key, torch.Tensor], None],
    ) -> None:
        self.modules = modules
        self.record = record
        self.mask: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, key: Key) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            self.record(key, real_tokens(inputs[0].detach(), self.mask))  # (tokens, features)

        return hook

    def __enter__(self) -> InputRecorder[Key]:
        for key, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(key)))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class FeatureSquares(Generic[Key]):
    """A ``record`` for :class:`InputRecorder` that keeps, per key, the sum over the tokens
    recorded of each input feature's square (``sums[key]``, ``(features,)``) and how many
    tokens there were (``tokens[key]``)."""

    def __init__(self) -> None:
        self.sums: dict[Key, torch.Tensor] = {}
        self.tokens: dict[Key, int] = {}

    def __call__(self, key: Key, inputs: torch.Tensor) -> None:
        squares = inputs.float().pow(2).sum(dim=0)  # (features,)
        self.sums[key] = self.sums[key] + squares if key in self.sums else squares
        self.tokens[key] = self.tokens.get(key, 0) + len(inputs)
