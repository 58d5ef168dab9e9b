"""Search spaces: from a YAML file to Optuna distributions to a PruneConfig.

A search space file names the dimensions searched (``heads``, ``ffn``, ``sparsity``), each
with a range as ratios of the dense layer (``min``, ``max``), a ``step`` (a ratio; by
default one head, a sixteenth of the feed-forward width, or 0.05 of sparsity) and whether
all layers ``share`` one value; and ``layers: {}`` to search which layers to keep whole
(depth pruning). A dimension left out stays dense.

Parameters are named ``heads_3`` (heads kept in layer 3), ``ffn_3``, ``sparsity_3``,
``layers_3`` (1 keeps layer 3, 0 drops it), or ``heads``, ``ffn``, ``sparsity`` when shared,
and hold counts (heads, neurons), fractions or keep flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from pydantic import Field, ValidationError, model_validator

from autoprune.engine.arch import Architecture
from autoprune.engine.prune import PruneConfig
from autoprune.search.spec import StudyError, format_validation_error, read_yaml
from autoprune.sections import Section

Dimension = Literal["heads", "ffn", "sparsity"]
DIMENSIONS: tuple[Dimension, ...] = ("heads", "ffn", "sparsity")


class DimensionSpec(Section):
    """One searched dimension."""

    min: float = Field(default=0.0, ge=0.0, le=1.0)
    max: float = Field(default=1.0, ge=0.0, le=1.0)
    step: float | None = Field(default=None, gt=0.0, le=1.0)
    shared: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> DimensionSpec:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        if self.step is not None:
            steps = (self.max - self.min) / self.step
            if abs(steps - round(steps)) > 1e-6:
                raise ValueError(
                    f"step ({self.step}) does not divide the range [{self.min}, {self.max}] "
                    f"into whole steps ({steps:.3g}); change min, max or step"
                )
        return self


class LayersSpec(Section):
    """Search which layers to keep (``layers: {}``): a keep flag per layer."""


class SearchSpaceSpec(Section):
    """A search space file."""

    description: str = ""
    heads: DimensionSpec | None = None
    ffn: DimensionSpec | None = None
    sparsity: DimensionSpec | None = None
    layers: LayersSpec | None = None

    @model_validator(mode="after")
    def _something_searched(self) -> SearchSpaceSpec:
        named = [d for d in (self.heads, self.ffn, self.sparsity) if d is not None]
        if not named and self.layers is None:
            raise ValueError("name at least one dimension: heads, ffn, sparsity or layers")
        if self.sparsity is not None and self.sparsity.max >= 1.0:
            raise ValueError("sparsity.max must be below 1")
        if named and self.layers is None and all(d.min == d.max for d in named):
            raise ValueError(
                "every dimension has min == max: the space holds one configuration, so "
                "every trial would be the same; widen a range"
            )
        return self


def load_space(path: str | Path) -> SearchSpaceSpec:
    """Read and validate a search space file; errors name the file and the key."""
    path = Path(path)
    data = read_yaml(path, "search space file")
    try:
        return SearchSpaceSpec.model_validate(data)
    except ValidationError as error:
        raise StudyError(format_validation_error(error, SearchSpaceSpec, str(path))) from None


class SearchSpace:
    """A search space laid over one model's architecture."""

    def __init__(self, spec: SearchSpaceSpec, arch: Architecture) -> None:
        self.spec = spec
        self.arch = arch
        self._distributions: dict[str, BaseDistribution] = {}
        for dimension in DIMENSIONS:
            dim_spec = getattr(spec, dimension)
            if dim_spec is None:
                continue
            if dim_spec.shared:
                self._distributions[dimension] = self._distribution(dimension, dim_spec, 0)
                if dimension != "sparsity" and len(set(self._units(dimension))) > 1:
                    raise StudyError(
                        f"search space: '{dimension}' is shared, but the model's layers differ "
                        f"in {dimension} ({self._units(dimension)}); use shared: false"
                    )
            else:
                for layer in range(arch.num_layers):
                    name = f"{dimension}_{layer}"
                    self._distributions[name] = self._distribution(dimension, dim_spec, layer)
        if spec.layers is not None:
            for layer in range(arch.num_layers):
                self._distributions[f"layers_{layer}"] = IntDistribution(0, 1)
        if all(d.low == d.high for d in self._distributions.values()):  # type: ignore[attr-defined]
            raise StudyError(
                "search space: on this model every parameter has a single value (the ranges "
                "are narrower than one head or step), so every trial would be the same; "
                "widen a range"
            )

    def _units(self, dimension: Dimension) -> tuple[int, ...]:
        return self.arch.heads if dimension == "heads" else self.arch.ffn

    def _distribution(
        self, dimension: Dimension, dim: DimensionSpec, layer: int
    ) -> BaseDistribution:
        if dimension == "sparsity":
            step = dim.step or 0.05
            high = dim.min + int(round((dim.max - dim.min) / step, 9)) * step
            return FloatDistribution(dim.min, round(high, 9), step=step)
        units = self._units(dimension)[layer]
        default_step = 1 / units if dimension == "heads" else 1 / 16
        step = max(1, round((dim.step or default_step) * units))
        low, high = round(dim.min * units), round(dim.max * units)
        high = low + (high - low) // step * step
        return IntDistribution(low, high, step=step)

    def distributions(self) -> dict[str, BaseDistribution]:
        """Every parameter the controller chooses, by name."""
        return dict(self._distributions)

    def to_config(self, params: dict[str, float | int]) -> PruneConfig:
        """The PruneConfig for a controller's parameters (unsearched dimensions stay dense)."""
        layers = range(self.arch.num_layers)

        def values(dimension: Dimension, dense: list[float] | list[int]) -> list:
            if dimension in params:
                return [params[dimension]] * self.arch.num_layers
            return [params.get(f"{dimension}_{layer}", dense[layer]) for layer in layers]

        return PruneConfig(
            heads=[int(v) for v in values("heads", list(self.arch.heads))],
            ffn=[int(v) for v in values("ffn", list(self.arch.ffn))],
            sparsity=[float(v) for v in values("sparsity", [0.0] * self.arch.num_layers)],
            layers=[bool(params.get(f"layers_{layer}", 1)) for layer in layers],
        )

    def extremes(self) -> tuple[PruneConfig, PruneConfig]:
        """The smallest and the largest configuration of the space."""
        smallest: dict[str, float | int] = {}
        largest: dict[str, float | int] = {}
        for name, dist in self._distributions.items():
            low, high = dist.low, dist.high  # type: ignore[attr-defined]
            is_sparsity = name.startswith("sparsity")
            smallest[name] = high if is_sparsity else low
            largest[name] = low if is_sparsity else high
        if "layers_0" in smallest:  # a model keeps at least one layer
            smallest["layers_0"] = 1
        return self.to_config(smallest), self.to_config(largest)
