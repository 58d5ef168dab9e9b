"""autoprune: search for the best way to prune a transformer.

The engine: load a model, describe it, score its heads, neurons and weights, prune it
according to a per-layer plan, measure it, save it and load it back; and a finished
search's run directory, read back with :func:`load_run`.
"""

from autoprune.arch import Architecture, UnsupportedModelError, describe
from autoprune.importance import importance
from autoprune.measure import Size, latency, measure
from autoprune.models import ModelNotFoundError, load_model
from autoprune.prune import PruneConfig, PruneConfigError, prune
from autoprune.results import Run, load_run
from autoprune.scores import Scores
from autoprune.serialize import load_pruned, save_pruned

__all__ = [
    "Architecture",
    "ModelNotFoundError",
    "PruneConfig",
    "PruneConfigError",
    "Run",
    "Scores",
    "Size",
    "UnsupportedModelError",
    "describe",
    "importance",
    "latency",
    "load_model",
    "load_pruned",
    "load_run",
    "measure",
    "prune",
    "save_pruned",
]
