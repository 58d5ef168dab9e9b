"""The plan (:class:`PruneConfig`) and its application (:func:`prune`).

A PruneConfig says, per layer, whether to keep the layer at all, how many query heads,
key/value groups and feed-forward neurons to keep and what fraction of the remaining linear
weights to zero. :func:`prune` reads importance scores to choose which heads, groups, neurons
and weights those are, and returns a new model: layers, heads, groups and neurons physically
taken out, the sparsity held by masks.
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
from autoprune.engine.sparsity import lowest_scored_masks, masked
from autoprune.errors import AutopruneError


class PruneConfigError(AutopruneError, ValueError):
    """A PruneConfig that is malformed or does not fit the model."""


_KEYS = ("heads", "ffn", "sparsity", "kv_heads", "layers")
_OPTIONAL = ("sparsity", "kv_heads", "layers")


@dataclass(frozen=True)
class PruneConfig:
    """Per-layer pruning plan.

    A layer keeps ``kv_heads[l]`` whole key/value groups and ``heads[l]`` query heads, the
    same number, ``heads[l] / kv_heads[l]``, in every kept group: removing whole groups with
    their query heads, and keeping fewer query heads in every group, are both plans. A head is
    never split, and a key/value projection always matches the query heads that read it.

    A layer whose ``layers`` flag is False is dropped whole (depth pruning); it keeps nothing,
    so its ``heads``, ``kv_heads``, ``ffn`` and ``sparsity`` entries are set to 0 whatever was
    given. Every entry is per layer of the model the config is applied to.

    Attributes:
        heads: Query heads to keep in each layer (0 keeps only the residual path).
        ffn: Feed-forward neurons to keep in each layer.
        sparsity: Fraction of the layer's remaining linear weights to zero, in ``[0, 1)``.
        kv_heads: Key/value heads (groups) to keep in each layer, or None for the default
            (:meth:`key_value_heads`): every group the kept query heads can fill.
        layers: Whether to keep each layer, or None when every layer is kept (a list of only
            True flags is stored as None). At least one layer is kept.
    """

    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    sparsity: tuple[float, ...]
    kv_heads: tuple[int, ...] | None
    layers: tuple[bool, ...] | None

    def __init__(
        self,
        heads: Sequence[int],
        ffn: Sequence[int],
        sparsity: Sequence[float] | None = None,
        kv_heads: Sequence[int] | None = None,
        layers: Sequence[bool] | None = None,
    ) -> None:
        sparsity = [0.0] * len(heads) if sparsity is None else sparsity
        if not len(heads) == len(ffn) == len(sparsity):
            raise PruneConfigError(
                f"heads, ffn and sparsity must have one entry per layer; got "
                f"{len(heads)}, {len(ffn)} and {len(sparsity)} entries"
            )
        if kv_heads is not None and len(kv_heads) != len(heads):
            raise PruneConfigError(
                f"kv_heads must have one entry per layer; got {len(kv_heads)} entries "
                f"for {len(heads)} layers"
            )
        for layer, (h, f, s) in enumerate(zip(heads, ffn, sparsity, strict=True)):
            counts = [("heads", h), ("ffn", f)]
            if kv_heads is not None:
                counts.append(("kv_heads", kv_heads[layer]))
            for field, value in counts:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise PruneConfigError(
                        f"layer {layer}: {field}={value!r}, expected a whole number >= 0"
                    )
            if isinstance(s, bool) or not isinstance(s, int | float) or not 0.0 <= s < 1.0:
                raise PruneConfigError(
                    f"layer {layer}: sparsity={s!r}, expected a number in [0, 1)"
                )
        keep = _layer_flags(layers, len(heads))

        def kept(values: Sequence[Any], kind: type) -> tuple[Any, ...]:
            return tuple(kind(v) if k else kind(0) for v, k in zip(values, keep, strict=True))

        object.__setattr__(self, "heads", kept(heads, int))
        object.__setattr__(self, "ffn", kept(ffn, int))
        object.__setattr__(self, "sparsity", kept(sparsity, float))
        object.__setattr__(self, "kv_heads", None if kv_heads is None else kept(kv_heads, int))
        object.__setattr__(self, "layers", None if all(keep) else keep)

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def kept_layers(self) -> tuple[bool, ...]:
        """Whether each layer is kept (all True unless ``layers`` drops some)."""
        return self.layers or (True,) * self.num_layers

    @classmethod
    def uniform(
        cls, arch: Architecture, heads: float = 1.0, ffn: float = 1.0, sparsity: float = 0.0
    ) -> PruneConfig:
        """The same ratios in every layer.

        Each layer keeps ``round(heads * k)`` of its ``k`` key/value groups, whole, with all
        their query heads (without grouped-query attention: ``round(heads * n)`` of its ``n``
        heads), ``round(ffn * m)`` of its ``m`` neurons, and zeros ``sparsity`` of the rest.
        """
        for field, ratio in (("heads", heads), ("ffn", ffn)):
            if not 0.0 <= ratio <= 1.0:
                raise PruneConfigError(f"{field} ratio must be in [0, 1], got {ratio}")
        kv_heads = [round(heads * k) for k in arch.kv_heads]
        grouped = any(arch.group_size(layer) > 1 for layer in range(arch.num_layers))
        return cls(
            heads=[kv * arch.group_size(layer) for layer, kv in enumerate(kv_heads)],
            ffn=[round(ffn * n) for n in arch.ffn],
            sparsity=[sparsity] * arch.num_layers,
            kv_heads=kv_heads if grouped else None,
        )

    @classmethod
    def dense(cls, arch: Architecture) -> PruneConfig:
        """Keep everything."""
        return cls.uniform(arch)

    def key_value_heads(self, arch: Architecture) -> tuple[int, ...]:
        """The key/value heads each layer keeps: ``kv_heads`` where given, else as many of the
        layer's key/value groups as it keeps query heads, up to all of them (so ``heads``
        itself without grouped-query attention, and every group when ``heads`` fills them).

        Raises:
            PruneConfigError: If the config and ``arch`` have different numbers of layers.
        """
        if self.num_layers != arch.num_layers:
            raise PruneConfigError(
                f"the config has {self.num_layers} layers, the model has {arch.num_layers}"
            )
        if self.kv_heads is not None:
            return self.kv_heads
        return tuple(min(h, k) for h, k in zip(self.heads, arch.kv_heads, strict=True))

    def validate(self, arch: Architecture) -> None:
        """Raise :class:`PruneConfigError` naming the layer and field that ``arch`` cannot take.

        Beyond the bounds, each layer's query heads must split evenly over its kept key/value
        groups, no more per group than the model's groups hold.
        """
        kv_heads = self.key_value_heads(arch)
        for layer in range(arch.num_layers):
            heads, kv = self.heads[layer], kv_heads[layer]
            for field, value, limit, unit in (
                ("heads", heads, arch.heads[layer], "heads"),
                ("kv_heads", kv, arch.kv_heads[layer], "key/value heads"),
                ("ffn", self.ffn[layer], arch.ffn[layer], "neurons"),
            ):
                if value > limit:
                    raise PruneConfigError(
                        f"layer {layer}: {field}={value}, but the layer has {limit} {unit} "
                        f"(allowed 0..{limit})"
                    )
            pair = f"layer {layer}: heads={heads} with kv_heads={kv}"
            if (heads == 0) != (kv == 0):
                raise PruneConfigError(
                    f"{pair}: a layer keeps key/value heads exactly when it keeps query heads"
                )
            if kv > 0 and heads % kv != 0:
                raise PruneConfigError(
                    f"{pair}: each kept key/value group must keep the same number of query heads"
                )
            if kv > 0 and heads // kv > arch.group_size(layer):
                raise PruneConfigError(
                    f"{pair}: a key/value group holds at most {arch.group_size(layer)} query heads"
                )

    def to_dict(self) -> dict[str, list[Any]]:
        """``{"heads": .., "ffn": .., "sparsity": ..}``, with ``"kv_heads"`` and ``"layers"``
        where they are set."""
        data: dict[str, list[Any]] = {
            "heads": list(self.heads),
            "ffn": list(self.ffn),
            "sparsity": list(self.sparsity),
        }
        if self.kv_heads is not None:
            data["kv_heads"] = list(self.kv_heads)
        if self.layers is not None:
            data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "PruneConfig") -> PruneConfig:
        """Build from :meth:`to_dict`'s form (``sparsity``, ``kv_heads`` and ``layers``
        optional); errors name ``source``."""
        if not isinstance(data, Mapping):
            raise PruneConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise PruneConfigError(
                f"{source}: unknown key(s) {unknown}; allowed: {', '.join(_KEYS)}"
            )
        for key in _KEYS:
            optional = key in _OPTIONAL
            if not isinstance(data.get(key), list) and not (optional and key not in data):
                raise PruneConfigError(f"{source}: key {key!r} must be a list, one entry per layer")
        try:
            return cls(
                data["heads"],
                data["ffn"],
                data.get("sparsity"),
                data.get("kv_heads"),
                data.get("layers"),
            )
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


def _layer_flags(layers: Sequence[bool] | None, num_layers: int) -> tuple[bool, ...]:
    """``layers`` checked (one bool per layer, at least one True), or all True for None."""
    if layers is None:
        return (True,) * num_layers
    if len(layers) != num_layers:
        raise PruneConfigError(
            f"layers must have one entry per layer; got {len(layers)} entries for "
            f"{num_layers} layers"
        )
    for layer, flag in enumerate(layers):
        if not isinstance(flag, bool):
            raise PruneConfigError(f"layer {layer}: layers={flag!r}, expected true or false")
    if not any(layers):
        raise PruneConfigError("layers: every layer is dropped; keep at least one")
    return tuple(layers)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in increasing index order."""
    return torch.topk(scores.float(), k).indices.sort().values


def _choose_heads(
    scores: torch.Tensor, group_size: int, heads: int, kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The query heads and key/value groups one layer keeps, each in increasing order.

    Every group is worth the summed scores of its ``heads / kv_heads`` best heads (the ones it
    would keep); the ``kv_heads`` groups worth most are kept, each with those heads.

    Args:
        scores: One score per query head, ``(groups * group_size,)``; query head ``i`` belongs
            to group ``i // group_size``.
        group_size: Query heads per key/value group in the layer now.
        heads: Query heads to keep, a multiple of ``kv_heads`` (validated by the config).
        kv_heads: Key/value groups to keep.
    """
    if kv_heads == 0:
        none = torch.zeros(0, dtype=torch.long)
        return none, none
    per_group = scores.float().view(-1, group_size)  # (groups, group_size)
    best = per_group.topk(heads // kv_heads, dim=1)  # (groups, heads / kv_heads)
    keep_kv = _top(best.values.sum(dim=1), kv_heads)  # (kv_heads,)
    within = best.indices[keep_kv].sort(dim=1).values  # (kv_heads, heads / kv_heads)
    keep_heads = (keep_kv[:, None] * group_size + within).reshape(-1)  # (heads,)
    return keep_heads, keep_kv


def kept_units(
    config: PruneConfig, scores: Scores, arch: Architecture
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer, the query heads, key/value groups and neurons that :func:`prune` keeps for
    ``config`` (each in increasing index order), whether or not the layer itself is kept."""
    kv_heads = config.key_value_heads(arch)
    return [
        (
            *_choose_heads(
                scores.heads[index], arch.group_size(index), config.heads[index], kv_heads[index]
            ),
            _top(scores.neurons[index], config.ffn[index]),
        )
        for index in range(arch.num_layers)
    ]


def prune(model: PreTrainedModel, config: PruneConfig, scores: Scores) -> PreTrainedModel:
    """A pruned copy of ``model``; ``model`` itself is untouched.

    Guarantees: each layer keeps the ``kv_heads[l]`` key/value groups (see
    :meth:`PruneConfig.key_value_heads`) whose best ``heads[l] / kv_heads[l]`` heads score
    highest, with those heads, and its ``ffn[l]`` highest-scored neurons, all sliced out of
    the weight matrices (without grouped-query attention: the ``heads[l]`` highest-scored
    heads). Then exactly ``round(config.sparsity[l] * n)`` of the layer's ``n`` remaining
    linear weights, the lowest-scored, are zero and held at zero by masks
    (:func:`autoprune.engine.sparsity.masked`); for scores compared per output row
    (``scores.scope == "row"``), ``round(config.sparsity[l] * n)`` of every row's ``n``.
    Layers that ``config.layers`` drops are taken out of the model last; the model then
    computes what the one it was pruned to, without those layers, computes, and its config
    records them
    (:meth:`autoprune.engine.arch.Family.drop_layers`).

    Raises:
        PruneConfigError: If ``config`` does not fit ``model``.
        ValueError: If ``scores`` do not fit ``model``, or sparsity is asked for without
            per-weight scores.
    """
    family = family_of(model)
    arch = describe(model)
    config.validate(arch)
    scores.check(arch)
    kept = kept_units(config, scores, arch)
    pruned = copy.deepcopy(model)
    groups = family.groups(pruned)
    for index, layer in enumerate(family.layers(pruned)):
        if not config.kept_layers()[index]:
            continue
        keep_heads, keep_kv, keep_neurons = kept[index]
        plan = family.slice_layer(layer, groups, keep_heads, keep_kv, keep_neurons)
        if config.sparsity[index] == 0.0:
            continue
        linears = groups.linears(layer)
        layer_scores = {}
        for path in linears:
            if path not in scores.weights[index]:
                raise ValueError(
                    f"layer {index}: scores ({scores.method}) hold no per-weight scores for "
                    f"{path!r}, needed for sparsity {config.sparsity[index]}"
                )
            dim, keep = plan[path]
            layer_scores[path] = scores.weights[index][path].index_select(dim, keep)
        masks = lowest_scored_masks(layer_scores, config.sparsity[index], scores.scope)
        for path, linear in linears.items():
            layer.set_submodule(path, masked(linear, masks[path]))
    if config.layers is not None:
        family.drop_layers(pruned, config.layers)
    return pruned
