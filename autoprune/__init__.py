"""autoprune: search for the best way to prune a transformer.

The engine: load a model, describe it, score its heads, neurons and weights, prune it
according to a per-layer plan, measure it, save it and load it back.
"""

from autoprune.arch import Architecture, UnsupportedModelError, describe
from autoprune.importance import importance
from autoprune.measure import Size, latency, measure
from autoprune.models import ModelNotFoundError, load_model
from autoprune.prune import PruneConfig, PruneConfigError, prune
from autoprune.scores import Scores
from autoprune.serialize import load_pruned, save_pruned

__all__ = [
    "Architecture",
    "ModelNotFoundError",
    "PruneConfig",
    "PruneConfigError",
    "Scores",
    "Size",
    "UnsupportedModelError",
    "describe",
    "importance",
    "latency",
    "load_model",
    "load_pruned",
    "measure",
    "prune",
    "save_pruned",
]
