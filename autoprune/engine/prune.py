"""The plan (:class:`PruneConfig`) and its application (:func:`prune`).

A PruneConfig says, per layer, how many attention heads and feed-forward neurons to keep and
what fraction of the remaining linear weights to zero. :func:`prune` reads importance
scores to choose which heads, neurons and weights those are, and returns a new model: heads
and neurons physically sliced out, the sparsity held by masks.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from autoprune.engine.arch import Architecture, describe, family_of
from autoprune.engine.scores import Scores
from autoprune.engine.sparsity import MaskedLinear, lowest_scored_masks
from autoprune.errors import AutopruneError


class PruneConfigError(AutopruneError, ValueError):
    """A PruneConfig that is malformed or does not fit the model."""


@dataclass(frozen=True)
class PruneConfig:
    """Per-layer pruning plan.

    Attributes:
        heads: Attention heads to keep in each layer (0 keeps only the residual path).
        ffn: Feed-forward neurons to keep in each layer.
        sparsity: Fraction of the layer's remaining linear weights to zero, in ``[0, 1)``.
    """

    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    sparsity: tuple[float, ...]

    def __init__(
        self,
        heads: Sequence[int],
        ffn: Sequence[int],
        sparsity: Sequence[float] | None = None,
    ) -> None:
        sparsity = [0.0] * len(heads) if sparsity is None else sparsity
        if not len(heads) == len(ffn) == len(sparsity):
            raise PruneConfigError(
                f"heads, ffn and sparsity must have one entry per layer; got "
                f"{len(heads)}, {len(ffn)} and {len(sparsity)} entries"
            )
        for layer, (h, f, s) in enumerate(zip(heads, ffn, sparsity, strict=True)):
            for field, value in (("heads", h), ("ffn", f)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise PruneConfigError(
                        f"layer {layer}: {field}={value!r}, expected a whole number >= 0"
                    )
            if isinstance(s, bool) or not isinstance(s, int | float) or not 0.0 <= s < 1.0:
                raise PruneConfigError(
                    f"layer {layer}: sparsity={s!r}, expected a number in [0, 1)"
                )
        object.__setattr__(self, "heads", tuple(int(h) for h in heads))
        object.__setattr__(self, "ffn", tuple(int(f) for f in ffn))
        object.__setattr__(self, "sparsity", tuple(float(s) for s in sparsity))

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @classmethod
    def uniform(
        cls, arch: Architecture, heads: float = 1.0, ffn: float = 1.0, sparsity: float = 0.0
    ) -> PruneConfig:
        """The same ratios in every layer: keep ``round(heads * n)`` heads, and so on."""
        for field, ratio in (("heads", heads), ("ffn", ffn)):
            if not 0.0 <= ratio <= 1.0:
                raise PruneConfigError(f"{field} ratio must be in [0, 1], got {ratio}")
        return cls(
            heads=[round(heads * n) for n in arch.heads],
            ffn=[round(ffn * n) for n in arch.ffn],
            sparsity=[sparsity] * arch.num_layers,
        )

    @classmethod
    def dense(cls, arch: Architecture) -> PruneConfig:
        """Keep everything."""
        return cls.uniform(arch)

    def validate(self, arch: Architecture) -> None:
        """Raise :class:`PruneConfigError` naming the layer and field that ``arch`` cannot take."""
        if self.num_layers != arch.num_layers:
            raise PruneConfigError(
                f"the config has {self.num_layers} layers, the model has {arch.num_layers}"
            )
        for layer in range(arch.num_layers):
            if self.heads[layer] > arch.heads[layer]:
                raise PruneConfigError(
                    f"layer {layer}: heads={self.heads[layer]}, but the layer has "
                    f"{arch.heads[layer]} heads (allowed 0..{arch.heads[layer]})"
                )
            if self.ffn[layer] > arch.ffn[layer]:
                raise PruneConfigError(
                    f"layer {layer}: ffn={self.ffn[layer]}, but the layer has "
                    f"{arch.ffn[layer]} neurons (allowed 0..{arch.ffn[layer]})"
                )

    def to_dict(self) -> dict[str, list[Any]]:
        return {"heads": list(self.heads), "ffn": list(self.ffn), "sparsity": list(self.sparsity)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "PruneConfig") -> PruneConfig:
        """Build from ``{"heads": [..], "ffn": [..], "sparsity": [..]}``; errors name ``source``."""
        if not isinstance(data, Mapping):
            raise PruneConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"heads", "ffn", "sparsity"})
        if unknown:
            raise PruneConfigError(
                f"{source}: unknown key(s) {unknown}; allowed: heads, ffn, sparsity"
            )
        for key in ("heads", "ffn", "sparsity"):
            if not isinstance(data.get(key), list) and not (key == "sparsity" and key not in data):
                raise PruneConfigError(f"{source}: key {key!r} must be a list, one entry per layer")
        try:
            return cls(data["heads"], data["ffn"], data.get("sparsity"))
        except PruneConfigError as error:
            raise PruneConfigError(f"{source}: {error}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, source: str = "PruneConfig") -> PruneConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PruneConfigError(f"{source}: not valid JSON ({error})") from None
        return cls.from_dict(data, source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PruneConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"prune config not found: {path}")
        return cls.from_json(path.read_text(), source=str(path))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in increasing index order."""
    return torch.topk(scores.float(), k).indices.sort().values


def prune(model: PreTrainedModel, config: PruneConfig, scores: Scores) -> PreTrainedModel:
    """A pruned copy of ``model``; ``model`` itself is untouched.

    Guarantees: each layer keeps its ``config.heads[l]`` highest-scored heads and
    ``config.ffn[l]`` highest-scored neurons, sliced out of the weight matrices; then exactly
    ``round(config.sparsity[l] * n)`` of the layer's ``n`` remaining linear weights, the
    lowest-scored, are zero and held at zero by masks (:class:`MaskedLinear`).
    """
    family = family_of(model)
    arch = describe(model)
    config.validate(arch)
    scores.check(arch)
    pruned = copy.deepcopy(model)
    for index, layer in enumerate(family.layers(pruned)):
        keep_heads = _top(scores.heads[index], config.heads[index])
        keep_neurons = _top(scores.neurons[index], config.ffn[index])
        plan = family.slice_layer(layer, keep_heads, keep_neurons, arch.head_dim)
        if config.sparsity[index] == 0.0:
            continue
        linears = family.prunable_linears(layer)
        layer_scores = {}
        for path in linears:
            if path not in scores.weights[index]:
                raise ValueError(
                    f"layer {index}: scores ({scores.method}) hold no per-weight scores for "
                    f"{path!r}, needed for sparsity {config.sparsity[index]}"
                )
            dim, keep = plan[path]
            layer_scores[path] = scores.weights[index][path].index_select(dim, keep)
        masks = lowest_scored_masks(layer_scores, config.sparsity[index])
        for path, linear in linears.items():
            layer.set_submodule(path, MaskedLinear.from_linear(linear, masks[path]))
    return pruned
