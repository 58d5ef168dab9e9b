"""Model families: where their layers are and what is prunable in each.

:func:`family_of` picks the family of a model from its config's ``model_type``;
:func:`describe` reads a model's :class:`Architecture`, pruned or not.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from autoprune.engine.arch.base import LAYERS_RECORD, Architecture, Family
from autoprune.engine.arch.bert import BertFamily
from autoprune.engine.arch.distilbert import DistilBertFamily
from autoprune.engine.arch.electra import ElectraFamily
from autoprune.engine.arch.gpt2 import GPT2Family
from autoprune.engine.arch.llama import LlamaFamily
from autoprune.engine.arch.roberta import RobertaFamily
from autoprune.errors import AutopruneError

FAMILIES: tuple[Family, ...] = (
    BertFamily(),
    RobertaFamily(),
    ElectraFamily(),
    DistilBertFamily(),
    LlamaFamily(),
    GPT2Family(),
)


class UnsupportedModelError(AutopruneError, ValueError):
    """The model's family is not one autoprune knows how to prune."""


def supported_model_types() -> list[str]:
    """Every ``model_type`` some family handles, sorted."""
    return sorted(t for family in FAMILIES for t in family.model_types)


def family_of(model: PreTrainedModel) -> Family:
    """The family that handles ``model``; raises :class:`UnsupportedModelError` if none does."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedModelError(
        f"cannot prune a model of type {model_type!r} ({type(model).__name__}); "
        f"supported model types: {', '.join(supported_model_types())}"
    )


def describe(model: PreTrainedModel) -> Architecture:
    """The architecture of ``model`` as its modules are now (pruned models included)."""
    return family_of(model).describe(model)


__all__ = [
    "FAMILIES",
    "LAYERS_RECORD",
    "Architecture",
    "Family",
    "UnsupportedModelError",
    "describe",
    "family_of",
    "supported_model_types",
]
