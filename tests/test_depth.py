"""Depth pruning: whole layers dropped by ``PruneConfig(layers=...)``, on tiny models of every
family (encoders, a Llama with grouped-query attention, GPT-2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import FAMILIES, tiny_batch, tiny_model
from test_gpt2 import greedy, tiny_gpt2
from test_groups import llama_batch, scores_with_heads, tiny_llama
from transformers import DynamicCache, PreTrainedModel

import autoprune
from autoprune import PruneConfig, PruneConfigError
from autoprune.engine.arch import LAYERS_RECORD, family_of
from autoprune.engine.gates import gated
from autoprune.engine.measure import SizeModel

ALL = [*FAMILIES, "llama", "gpt2"]
DECODERS = ["llama", "gpt2"]


def model_of(family: str) -> PreTrainedModel:
    if family == "llama":
        return tiny_llama()
    if family == "gpt2":
        return tiny_gpt2()
    return tiny_model(family)


def batch_of(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return llama_batch(seed=seed) if family in DECODERS else tiny_batch(seed=seed)


def logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@contextmanager
def skipped(model: PreTrainedModel, dropped: list[int]) -> Iterator[None]:
    """Within the block, the given layers of ``model`` pass their input through unchanged."""

    def identity(module, args, kwargs, output):  # noqa: ANN001, ANN202
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    layers = family_of(model).layers(model)
    handles = [layers[i].register_forward_hook(identity, with_kwargs=True) for i in dropped]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def dense_but(
    model: PreTrainedModel, layers: list[bool], sparsity: list[float] | None = None
) -> PruneConfig:
    """A config keeping every head and neuron of ``model``, and the given layers."""
    arch = autoprune.describe(model)
    return PruneConfig(heads=arch.heads, ffn=arch.ffn, sparsity=sparsity, layers=layers)


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("layers", [[True, False, True], [False, True, False]])
def test_dropping_layers_equals_skipping_them(family: str, layers: list[bool]) -> None:
    model, batch = model_of(family), batch_of(family)
    scores = autoprune.importance(model, [], "magnitude")
    pruned = autoprune.prune(model, dense_but(model, layers), scores)
    with skipped(model, [i for i, kept in enumerate(layers) if not kept]):
        reference = logits(model, batch)
    assert torch.allclose(logits(pruned, batch), reference, atol=1e-5)
    arch = autoprune.describe(pruned)
    assert arch.num_layers == sum(layers) == pruned.config.num_hidden_layers
    assert getattr(pruned.config, LAYERS_RECORD) == layers
    assert getattr(model.config, LAYERS_RECORD, None) is None  # the input is untouched
    assert autoprune.describe(model).num_layers == 3


def test_dropping_a_layer_with_structured_pruning_equals_gating_and_skipping() -> None:
    model, batch = tiny_llama(), llama_batch()
    scores = scores_with_heads(model)  # layer 2 keeps heads 2 and 3 (its group 1)
    config = PruneConfig(
        heads=[4, 4, 2], ffn=[96, 96, 40], kv_heads=[2, 2, 1], layers=[True, False, True]
    )
    pruned = autoprune.prune(model, config, scores)
    neuron_gate = torch.zeros(96)
    neuron_gate[torch.topk(scores.neurons[2], 40).indices] = 1.0
    head_gates = [torch.ones(4), torch.ones(4), torch.tensor([0.0, 0.0, 1.0, 1.0])]
    with skipped(model, [1]), gated(model, head_gates, [torch.ones(96)] * 2 + [neuron_gate]):
        reference = logits(model, batch)
    assert torch.allclose(logits(pruned, batch), reference, atol=1e-5)
    assert autoprune.describe(pruned).heads == (4, 2) and autoprune.describe(pruned).ffn == (96, 40)


@pytest.mark.parametrize("family", DECODERS)
def test_decoders_renumber_their_layers_and_generate(family: str) -> None:
    model = model_of(family)
    scores = autoprune.importance(model, [], "magnitude")
    pruned = autoprune.prune(model, dense_but(model, [False, True, True]), scores)
    attention = "self_attn" if family == "llama" else "attn"
    indices = [
        layer.get_submodule(attention).layer_idx for layer in family_of(pruned).layers(pruned)
    ]
    assert indices == [0, 1]
    ids = llama_batch(batch_size=2, seq_len=8)["input_ids"]
    cache = DynamicCache(config=pruned.config)
    with torch.no_grad():
        full = pruned(input_ids=ids).logits[:, -1]  # (batch, vocab)
        pruned(input_ids=ids[:, :7], cache=cache, use_cache=True)
        step = pruned(input_ids=ids[:, 7:], cache=cache, use_cache=True).logits[:, -1]
    assert torch.allclose(step, full, atol=1e-5)
    assert torch.equal(greedy(pruned), greedy(pruned, use_cache=False))


@pytest.mark.parametrize("family", ALL)
def test_save_then_load_rebuilds_the_dropped_layers(family: str, tmp_path) -> None:
    model, batch = model_of(family), batch_of(family)
    scores = autoprune.importance(model, [batch], "magnitude")
    arch = autoprune.describe(model)
    config = PruneConfig(
        heads=[arch.heads[0], 0, 2],
        ffn=[5, 0, arch.ffn[2]],
        sparsity=[0.3, 0.0, 0.0],
        layers=[True, False, True],
    )
    pruned = autoprune.prune(model, config, scores)
    autoprune.save_pruned(pruned, tmp_path / "pruned")
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert saved[LAYERS_RECORD] == [True, False, True]
    assert saved["autoprune"]["heads"] == [arch.heads[0], 2]
    reloaded, _ = autoprune.load_pruned(tmp_path / "pruned")
    assert torch.equal(logits(reloaded, batch), logits(pruned, batch))
    assert autoprune.describe(reloaded) == autoprune.describe(pruned)
    assert reloaded.config.num_hidden_layers == 2


def test_layers_keep_their_index_dependent_settings_through_a_round_trip(tmp_path) -> None:
    """GPT-2 can scale attention by its layer's original index; reloading keeps that."""
    model = tiny_gpt2()
    model.config.scale_attn_by_inverse_layer_idx = True
    model = type(model)(model.config).eval()
    batch = llama_batch()
    pruned = autoprune.prune(
        model, dense_but(model, [False, True, True]), autoprune.importance(model, [], "random")
    )
    with skipped(model, [0]):
        assert torch.allclose(logits(pruned, batch), logits(model, batch), atol=1e-5)
    reloaded, _ = autoprune.load_pruned(autoprune.save_pruned(pruned, tmp_path / "pruned"))
    assert torch.equal(logits(reloaded, batch), logits(pruned, batch))


def test_pruning_twice_records_the_layers_of_the_original(tmp_path) -> None:
    model, batch = tiny_llama(), llama_batch()
    once = autoprune.prune(model, dense_but(model, [False, True, True]), scores_with_heads(model))
    scores = autoprune.importance(once, [], "magnitude")
    twice = autoprune.prune(once, dense_but(once, [True, False]), scores)
    assert getattr(twice.config, LAYERS_RECORD) == [False, True, False]
    with skipped(model, [0, 2]):
        assert torch.allclose(logits(twice, batch), logits(model, batch), atol=1e-5)
    reloaded, _ = autoprune.load_pruned(autoprune.save_pruned(twice, tmp_path / "twice"))
    assert torch.equal(logits(reloaded, batch), logits(twice, batch))


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_size_model_counts_dropped_layers(family: str) -> None:
    model = model_of(family)
    with torch.no_grad():  # no weight exactly zero, so non-zeros are foreseeable
        for parameter in model.parameters():
            parameter.add_(torch.rand_like(parameter) * 0.01 + 0.01)
    scores = autoprune.importance(model, [], "random")
    sizes = SizeModel.of(model, autoprune.measure(model, 16))
    arch = autoprune.describe(model)
    layer_params = sum(p.numel() for p in family_of(model).layers(model)[1].parameters())
    for config in (
        dense_but(model, [True, False, True]),
        dense_but(model, [False, True, False], sparsity=[0.0, 0.5, 0.0]),
        PruneConfig(heads=[2, 0, 2], ffn=[7, 0, 0], layers=[True, True, False]),
    ):
        measured = autoprune.measure(autoprune.prune(model, config, scores), 16)
        assert sizes.size(config) == measured
    dropped = autoprune.prune(model, dense_but(model, [True, False, True]), scores)
    assert autoprune.describe(dropped).total_params == arch.total_params - layer_params


def test_a_dropped_layer_keeps_nothing() -> None:
    config = PruneConfig(
        heads=[4, 4, 4],
        ffn=[8, 8, 8],
        sparsity=[0.5] * 3,
        kv_heads=[2, 2, 2],
        layers=[True, False, True],
    )
    assert config.heads == (4, 0, 4) and config.ffn == (8, 0, 8) and config.kv_heads == (2, 0, 2)
    assert config.sparsity == (0.5, 0.0, 0.5) and config.layers == (True, False, True)
    assert PruneConfig([4, 4], [8, 8], layers=[True, True]) == PruneConfig([4, 4], [8, 8])
    assert PruneConfig([4, 4], [8, 8]).kept_layers() == (True, True)


def test_layers_json_round_trip(tmp_path) -> None:
    config = PruneConfig(heads=[4, 0, 2], ffn=[8, 0, 3], layers=[True, False, True])
    assert config.to_dict()["layers"] == [True, False, True]
    assert PruneConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "prune_config.json")
    assert PruneConfig.load(tmp_path / "prune_config.json") == config
    assert "layers" not in PruneConfig(heads=[4], ffn=[8]).to_dict()


@pytest.mark.parametrize(
    "layers,message",
    [
        ([True, False], "layers must have one entry per layer; got 2 entries for 3 layers"),
        ([True, 1, True], "layer 1: layers=1, expected true or false"),
        ([False, False, False], "every layer is dropped; keep at least one"),
    ],
)
def test_bad_layers_are_named(layers: list, message: str) -> None:
    with pytest.raises(PruneConfigError, match=message):
        PruneConfig(heads=[4] * 3, ffn=[8] * 3, layers=layers)
    with pytest.raises(PruneConfigError, match="key 'layers' must be a list"):
        PruneConfig.from_dict({"heads": [4], "ffn": [8], "layers": True})
