"""How big and how fast a model is: parameters, non-zeros, bytes, MACs, latency."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Literal, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from autoprune.engine.arch import Architecture, describe, family_of
from autoprune.engine.groups import UNITS, Unit
from autoprune.engine.projections import Projection, is_projection, matrix_shape
from autoprune.engine.prune import PruneConfig
from autoprune.engine.sparsity import Masked, effective_weight

SizeUnit = Literal["params", "prunable", "nonzero", "bytes", "macs"]


@dataclass(frozen=True)
class Size:
    """The size of a model in every unit autoprune reports.

    Attributes:
        params: All parameters.
        prunable: Parameters of the prunable linear layers (attention and feed-forward).
        nonzero: Non-zero parameters of the prunable linear layers (unstructured sparsity
            shows here).
        nonzero_total: Non-zero parameters of the whole model.
        bytes: Bytes of the weights as saved (dense storage).
        macs: Multiply-accumulates for one sequence of ``seq_len`` tokens, attention included.
        seq_len: The sequence length ``macs`` is for.
    """

    params: int
    prunable: int
    nonzero: int
    nonzero_total: int
    bytes: int
    macs: int
    seq_len: int

    def ratio(self, dense: Size, unit: SizeUnit) -> float:
        """This size as a fraction of ``dense`` in ``unit``."""
        return getattr(self, unit) / getattr(dense, unit)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _nonzero(module: nn.Module) -> int:
    """Non-zero parameters of ``module``'s own tensors, masked weights counted as masked."""
    if is_projection(module):
        count = int(torch.count_nonzero(effective_weight(module)))
        bias = module.bias
        return count + (int(torch.count_nonzero(bias)) if bias is not None else 0)
    return sum(int(torch.count_nonzero(p)) for p in module.parameters(recurse=False))


def _linear_macs(model: PreTrainedModel, seq_len: int) -> int:
    """MACs of every projection (``nn.Linear``, ``Conv1D``) in one forward pass over one sequence
    of ``seq_len`` tokens."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        out_features, in_features = matrix_shape(cast(Projection, module))
        tokens = inputs[0].shape[:-1].numel()
        total += tokens * in_features * out_features

    device = next(model.parameters()).device
    handles = [m.register_forward_hook(count) for m in model.modules() if is_projection(m)]
    try:
        with torch.inference_mode():
            ids = torch.full((1, seq_len), 1, dtype=torch.long, device=device)
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for handle in handles:
            handle.remove()
    return total


def measure(model: PreTrainedModel, seq_len: int = 128) -> Size:
    """Every size unit of ``model``; MACs for one sequence of ``seq_len`` tokens.

    Attention's two matrix products (scores and weighted values) add
    ``2 * seq_len**2 * heads * head_dim`` MACs per layer to those of the linear layers.
    """
    family = family_of(model)
    groups = family.groups(model)
    arch = describe(model)
    prunable_modules = [
        lin for layer in family.layers(model) for lin in groups.linears(layer).values()
    ]
    masks = {f"{name}.mask" for name, m in model.named_modules() if isinstance(m, Masked)}
    saved_bytes = sum(
        t.numel() * t.element_size() for k, t in model.state_dict().items() if k not in masks
    )
    attention_macs = sum(2 * seq_len * seq_len * h * arch.head_dim for h in arch.heads)
    return Size(
        params=arch.total_params,
        prunable=arch.prunable_params,
        nonzero=sum(_nonzero(m) for m in prunable_modules),
        nonzero_total=sum(_nonzero(m) for m in model.modules()),
        bytes=saved_bytes,
        macs=_linear_macs(model, seq_len) + attention_macs,
        seq_len=seq_len,
    )


@dataclass(frozen=True)
class _UnitCost:
    """What one unit (head, key/value group, neuron) of a layer carries."""

    params: int
    weights: int
    macs: int


@dataclass(frozen=True)
class _Rest:
    """What is left of a layer that keeps no unit: all its parameters, and those of its
    prunable projections (biases of the output projections)."""

    params: int
    prunable: int


@dataclass(frozen=True)
class SizeModel:
    """The exact size of structurally pruned variants of one model, without building them.

    Every query head of a layer carries the same rows and columns of its attention
    projections, every key/value group the same rows of the key and value projections, every
    neuron the same of its MLP ones (the family's :class:`LayerGroups` say which), so sizes
    are sums of per-unit costs; a dropped layer also takes what is left of it when it keeps
    no unit (its norms, its output projections' biases). Unstructured zeros are counted as the
    masks will make them (weights that are already exactly zero are not foreseen, so
    ``nonzero`` can be slightly above the measured value). Used to check a size band before
    any model is built; tests hold it to :func:`measure`.
    """

    dense: Size
    arch: Architecture
    costs: tuple[dict[Unit, _UnitCost], ...]
    rest: tuple[_Rest, ...]
    bytes_per_param: int

    @classmethod
    def of(cls, model: PreTrainedModel, dense: Size) -> SizeModel:
        """The size model of ``model``, whose measured size (at its ``seq_len``) is ``dense``."""
        family = family_of(model)
        groups = family.groups(model)
        arch = describe(model)
        tokens = dense.seq_len
        costs, rest = [], []
        for index, layer in enumerate(family.layers(model)):
            linears = groups.linears(layer)
            layer_costs = {}
            for unit in UNITS:
                shares = [s.cost(linears[s.path]) for s in groups.slices(unit) if s.path in linears]
                params, weights = sum(p for p, _ in shares), sum(w for _, w in shares)
                # a query head also computes its scores and weighted values
                attention = 2 * tokens * tokens * arch.head_dim if unit == "head" else 0
                layer_costs[unit] = _UnitCost(params, weights, tokens * weights + attention)
            costs.append(layer_costs)
            dense_units = {"head": arch.heads, "kv": arch.kv_heads, "neuron": arch.ffn}
            in_units = sum(dense_units[u][index] * c.params for u, c in layer_costs.items())
            prunable = sum(p.numel() for lin in linears.values() for p in lin.parameters())
            total = sum(p.numel() for p in layer.parameters())
            rest.append(_Rest(total - in_units, prunable - in_units))
        element = next(model.parameters()).element_size()
        return cls(dense, arch, tuple(costs), tuple(rest), element)

    def size(self, config: PruneConfig) -> Size:
        """The size :func:`autoprune.prune` with ``config`` will give, then :func:`measure`.

        Raises:
            PruneConfigError: If ``config`` does not fit the model.
        """
        config.validate(self.arch)
        kept = {"head": config.heads, "kv": config.key_value_heads(self.arch), "neuron": config.ffn}
        dense_units = {"head": self.arch.heads, "kv": self.arch.kv_heads, "neuron": self.arch.ffn}
        removed_params = removed_prunable = removed_macs = zeros = 0
        for layer, costs in enumerate(self.costs):
            if not config.kept_layers()[layer]:  # its units are all cut below
                removed_params += self.rest[layer].params
                removed_prunable += self.rest[layer].prunable
            kept_weights = 0
            for unit, cost in costs.items():
                cut = dense_units[unit][layer] - kept[unit][layer]
                removed_params += cut * cost.params
                removed_prunable += cut * cost.params
                removed_macs += cut * cost.macs
                kept_weights += kept[unit][layer] * cost.weights
            zeros += round(config.sparsity[layer] * kept_weights)
        dense = self.dense
        return Size(
            params=dense.params - removed_params,
            prunable=dense.prunable - removed_prunable,
            nonzero=dense.nonzero - removed_prunable - zeros,
            nonzero_total=dense.nonzero_total - removed_params - zeros,
            bytes=dense.bytes - removed_params * self.bytes_per_param,
            macs=dense.macs - removed_macs,
            seq_len=dense.seq_len,
        )


def latency(
    model: PreTrainedModel,
    batch_size: int = 32,
    seq_len: int = 128,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> list[float]:
    """Seconds per forward pass of a ``(batch_size, seq_len)`` batch, ``repeats`` times.

    Runs ``warmup`` passes first, in eval mode under ``torch.inference_mode`` on the model's
    device; the model's train/eval mode is the same on return.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(device)
    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(input_ids=ids, attention_mask=mask)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return times
