"""Importance scores: one number per head, per feed-forward neuron and per weight.

Scores are what every importance criterion returns and what pruning reads; higher means
more important. They are saved to one safetensors file so a study computes them once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from autoprune.engine.arch import Architecture
from autoprune.engine.sparsity import Scope


@dataclass
class Scores:
    """Per-layer importance scores.

    Attributes:
        method: The criterion that produced them (``"fisher"``, ``"magnitude"``, ...).
        heads: Per layer, a ``(num_heads,)`` tensor.
        neurons: Per layer, a ``(ffn_width,)`` tensor.
        weights: Per layer, the prunable linear layers' paths (relative to the layer) mapped
            to ``(out_features, in_features)`` tensors, one score per weight.
        scope: Which weights' scores compare when a layer is made sparse: the whole layer's,
            or each output row's (:data:`autoprune.engine.sparsity.Scope`).
    """

    method: str
    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    weights: list[dict[str, torch.Tensor]]
    scope: Scope = "layer"

    def check(self, arch: Architecture) -> None:
        """Raise ``ValueError`` naming the layer if these scores do not fit ``arch``."""
        if len(self.heads) != arch.num_layers or len(self.neurons) != arch.num_layers:
            raise ValueError(
                f"scores ({self.method}) cover {len(self.heads)} layers, "
                f"the model has {arch.num_layers}"
            )
        for layer, (heads, neurons) in enumerate(zip(self.heads, self.neurons, strict=True)):
            if heads.numel() != arch.heads[layer] or neurons.numel() != arch.ffn[layer]:
                raise ValueError(
                    f"layer {layer}: scores ({self.method}) are for {heads.numel()} heads and "
                    f"{neurons.numel()} neurons, the model has {arch.heads[layer]} heads and "
                    f"{arch.ffn[layer]} neurons"
                )

    def save(self, path: str | Path) -> None:
        """Write the scores to one safetensors file."""
        tensors: dict[str, torch.Tensor] = {}
        for layer in range(len(self.heads)):
            tensors[f"heads.{layer}"] = self.heads[layer].contiguous()
            tensors[f"neurons.{layer}"] = self.neurons[layer].contiguous()
            for name, scores in self.weights[layer].items():
                tensors[f"weights.{layer}.{name}"] = scores.contiguous()
        metadata = {
            "method": self.method,
            "num_layers": json.dumps(len(self.heads)),
            "scope": self.scope,
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> Scores:
        """Read scores written by :meth:`save`; a missing or foreign file is a clear error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"scores file not found: {path}")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if "method" not in metadata or "num_layers" not in metadata:
            raise ValueError(f"{path} is not an autoprune scores file (no 'method' metadata)")
        tensors = load_file(str(path))
        num_layers = int(metadata["num_layers"])
        weights: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
        for key, tensor in tensors.items():
            if key.startswith("weights."):
                _, layer, name = key.split(".", 2)
                weights[int(layer)][name] = tensor
        return cls(
            method=metadata["method"],
            heads=[tensors[f"heads.{layer}"] for layer in range(num_layers)],
            neurons=[tensors[f"neurons.{layer}"] for layer in range(num_layers)],
            weights=weights,
            scope="row" if metadata.get("scope") == "row" else "layer",
        )
