"""The engine: what a model is and how to shrink it. No Optuna, no YAML.

Load a model (a classifier or a causal language model), describe it, score its heads, neurons
and weights, prune it according to a per-layer plan, measure it, save it and load it back.
"""

from autoprune.engine.arch import Architecture, UnsupportedModelError, describe
from autoprune.engine.importance import importance
from autoprune.engine.measure import Size, latency, measure
from autoprune.engine.models import ModelNotFoundError, load_causal_lm, load_model
from autoprune.engine.prune import PruneConfig, PruneConfigError, prune
from autoprune.engine.scores import Scores
from autoprune.engine.serialize import load_pruned, save_pruned

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
    "load_causal_lm",
    "load_model",
    "load_pruned",
    "measure",
    "prune",
    "save_pruned",
]
