"""Saving and loading pruned models.

A pruned model directory is what ``save_pretrained`` would write (``config.json``,
``model.safetensors``, the tokenizer's files) with the per-layer shapes (query heads,
key/value heads, MLP neurons) recorded in the config under ``"autoprune"``, and, where layers
were dropped, which layers of the original model remain under ``"autoprune_layers"``.
:func:`load_pruned` rebuilds the model class from the config at its original depth, drops the
same layers, gives each layer its recorded shapes and loads the weights strictly, so the
reloaded model computes exactly what the saved one did.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import cast

import transformers
from safetensors.torch import load_model, save_model
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from autoprune.engine.arch import LAYERS_RECORD, describe, family_of
from autoprune.engine.sparsity import bake

CONFIG_KEY = "autoprune"
WEIGHTS_FILE = "model.safetensors"


def is_pruned_dir(directory: str | Path) -> bool:
    """Whether ``directory`` holds a model written by :func:`save_pruned`."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return False
    try:
        return CONFIG_KEY in json.loads(config.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config}: not valid JSON ({error})") from None


def save_pruned(
    model: PreTrainedModel,
    directory: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write ``model`` (pruned or not) and its shapes to ``directory``; ``model`` is untouched.

    Masked weights are written as plain weights holding their zeros.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    baked = cast(PreTrainedModel, bake(copy.deepcopy(model)).cpu())
    arch = describe(baked)
    config = copy.deepcopy(baked.config)
    config.architectures = [type(baked).__name__]
    setattr(
        config,
        CONFIG_KEY,
        {
            "family": arch.family,
            "heads": list(arch.heads),
            "kv_heads": list(arch.kv_heads),
            "ffn": list(arch.ffn),
        },
    )
    config.save_pretrained(directory)
    # tied weights (an input embedding shared with the output head) are written once
    save_model(baked, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def load_pruned(
    directory: str | Path,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Rebuild a model written by :func:`save_pruned`: ``(model, tokenizer or None)``, eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"pruned model directory not found: {directory}")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json: not a saved model directory")
    if not is_pruned_dir(directory):
        raise ValueError(
            f"{config_file} has no {CONFIG_KEY!r} key: not written by autoprune.save_pruned "
            f"(load an unpruned model with autoprune.load_model)"
        )
    weights_file = directory / WEIGHTS_FILE
    if not weights_file.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE}")
    config = AutoConfig.from_pretrained(directory)
    shapes = getattr(config, CONFIG_KEY)
    class_name = (config.architectures or [""])[0]
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        raise ValueError(f"{config_file}: unknown model class {class_name!r} in 'architectures'")
    layers = getattr(config, LAYERS_RECORD, None)
    if layers is not None:  # built at the original depth: layers may depend on their index
        setattr(config, LAYERS_RECORD, None)
        config.num_hidden_layers = len(layers)
    model = model_class(config)
    family = family_of(model)
    if layers is not None:
        family.drop_layers(model, layers)
    # directories written before key/value heads were recorded hold no grouped-query attention
    kv_heads = shapes.get("kv_heads", shapes["heads"])
    family.reshape(model, shapes["heads"], kv_heads, shapes["ffn"])
    load_model(model, weights_file, strict=True)
    model.eval()
    has_tokenizer = (directory / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(directory) if has_tokenizer else None
    return model, tokenizer
