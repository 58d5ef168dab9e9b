"""autoprune: search for the best way to prune a transformer.

``import autoprune`` gives the engine: load a model, describe it, score its heads, neurons
and weights, prune it according to a per-layer plan, measure it, save it and load it back.
:func:`load_run`, which reads a finished search's run directory, imports the search's
dependencies (Optuna, pandas) only when it is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoprune.engine import (
    Architecture,
    ModelNotFoundError,
    PruneConfig,
    PruneConfigError,
    Scores,
    Size,
    UnsupportedModelError,
    describe,
    importance,
    latency,
    load_causal_lm,
    load_model,
    load_pruned,
    measure,
    prune,
    save_pruned,
)

if TYPE_CHECKING:
    from autoprune.reports.results import Run, load_run

__version__ = "0.2.0"

_LAZY = {"Run": "autoprune.reports.results", "load_run": "autoprune.reports.results"}


def __getattr__(name: str) -> Any:
    """Import the run reader on first use, so the engine alone stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")


__all__ = [
    "Architecture",
    "ModelNotFoundError",
    "PruneConfig",
    "PruneConfigError",
    "Run",
    "Scores",
    "Size",
    "UnsupportedModelError",
    "__version__",
    "describe",
    "importance",
    "latency",
    "load_causal_lm",
    "load_model",
    "load_pruned",
    "load_run",
    "measure",
    "prune",
    "save_pruned",
]
