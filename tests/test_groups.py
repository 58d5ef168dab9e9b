"""Prunable groups and grouped-query attention, on a tiny random Llama decoder."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import autoprune
from autoprune import PruneConfig, PruneConfigError
from autoprune.engine.arch import family_of
from autoprune.engine.gates import gated
from autoprune.engine.measure import SizeModel

ATOL = 1e-5
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 64, 4, 2, 16, 96, 128

# Per layer, a head score for each of the 4 query heads; heads (0, 1) read key/value group 0,
# heads (2, 3) group 1. Layer 0 prefers group 0, layers 1 and 2 prefer group 1.
HEAD_SCORES = [[4.0, 3.0, 1.0, 2.0], [1.0, 2.0, 5.0, 0.0], [0.0, 1.0, 2.0, 3.0]]

# (heads, kv_heads, ffn) and the query heads each layer must keep, given HEAD_SCORES.
SHAPES = [
    pytest.param(
        [2, 2, 0], [1, 2, 0], [96, 40, 0], [[0, 1], [1, 2], []], id="whole-group|per-group|zero"
    ),
    pytest.param(
        [4, 1, 2], [2, 1, 1], [10, 96, 50], [[0, 1, 2, 3], [2], [2, 3]], id="dense|one|group"
    ),
    pytest.param([4, 2, 0], None, [96, 96, 7], [[0, 1, 2, 3], [1, 2], []], id="default-kv"),
]


def tiny_llama(attn_implementation: str = "sdpa", seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialized 3-layer Llama: 4 query heads of 16 over 2 key/value heads."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=3,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=64,
    )
    config._attn_implementation = attn_implementation
    return LlamaForCausalLM(config).eval()


def llama_batch(batch_size: int = 3, seq_len: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids, the first sequence right-padded, with themselves as labels."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch_size, seq_len), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, seq_len // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids}


def logits(model: LlamaForCausalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits  # (batch, seq, vocab)


def scores_with_heads(model: LlamaForCausalLM) -> autoprune.Scores:
    """Magnitude scores for neurons and weights, :data:`HEAD_SCORES` for the heads."""
    scores = autoprune.importance(model, [], "magnitude")
    return autoprune.Scores(
        "magnitude", [torch.tensor(h) for h in HEAD_SCORES], scores.neurons, scores.weights
    )


def test_describe_reads_grouped_query_attention() -> None:
    arch = autoprune.describe(tiny_llama())
    assert arch.family == "llama" and arch.num_layers == 3 and arch.hidden_size == HIDDEN
    assert arch.heads == (4, 4, 4) and arch.kv_heads == (2, 2, 2) and arch.head_dim == HEAD_DIM
    assert arch.ffn == (FFN,) * 3 and arch.group_size(0) == 2
    per_layer = 4 * HIDDEN * HEAD_DIM * (HEADS + KV_HEADS) // 2 + 3 * HIDDEN * FFN
    assert arch.prunable_params == 3 * per_layer  # q, o: 4 heads; k, v: 2 heads; no biases


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("heads,kv_heads,ffn,kept", SHAPES)
def test_physical_gqa_pruning_equals_gating(
    attn_implementation: str,
    heads: list[int],
    kv_heads: list[int] | None,
    ffn: list[int],
    kept: list[list[int]],
) -> None:
    model, batch = tiny_llama(attn_implementation), llama_batch()
    scores = scores_with_heads(model)
    config = PruneConfig(heads=heads, ffn=ffn, kv_heads=kv_heads)
    pruned = autoprune.prune(model, config, scores)

    head_gates = [torch.zeros(HEADS) for _ in kept]
    for gate, kept_heads in zip(head_gates, kept, strict=True):
        gate[kept_heads] = 1.0
    neuron_gates = [torch.zeros(FFN) for _ in ffn]
    for gate, neuron_scores, n in zip(neuron_gates, scores.neurons, ffn, strict=True):
        gate[torch.topk(neuron_scores, n).indices] = 1.0
    with gated(model, head_gates, neuron_gates):
        reference = logits(model, batch)
    assert torch.allclose(logits(pruned, batch), reference, atol=ATOL)

    arch = autoprune.describe(pruned)
    expected_kv = config.key_value_heads(autoprune.describe(model))
    assert list(arch.heads) == heads and arch.kv_heads == expected_kv and list(arch.ffn) == ffn
    for layer, n_heads, n_kv in zip(pruned.model.layers, heads, expected_kv, strict=True):
        if n_heads:
            assert layer.self_attn.num_key_value_groups == n_heads // n_kv


def test_input_model_is_untouched() -> None:
    model, batch = tiny_llama(), llama_batch()
    before = logits(model, batch)
    autoprune.prune(
        model, PruneConfig([2, 0, 4], [5, 96, 0], kv_heads=[1, 0, 2]), scores_with_heads(model)
    )
    assert autoprune.describe(model).kv_heads == (2, 2, 2)
    assert all(layer.self_attn.num_key_value_groups == 2 for layer in model.model.layers)
    assert torch.equal(logits(model, batch), before)


def test_save_then_load_gives_identical_logits(tmp_path) -> None:
    model, batch = tiny_llama(), llama_batch()
    scores = autoprune.importance(model, [batch], "taylor")
    config = PruneConfig(
        heads=[2, 2, 0], ffn=[30, 0, 96], sparsity=[0.3, 0.0, 0.5], kv_heads=[1, 2, 0]
    )
    pruned = autoprune.prune(model, config, scores)
    autoprune.save_pruned(pruned, tmp_path / "pruned")
    recorded = json.loads((tmp_path / "pruned" / "config.json").read_text())["autoprune"]
    assert recorded["heads"] == [2, 2, 0] and recorded["kv_heads"] == [1, 2, 0]
    reloaded, _ = autoprune.load_pruned(tmp_path / "pruned")
    assert torch.equal(logits(reloaded, batch), logits(pruned, batch))
    assert autoprune.describe(reloaded) == autoprune.describe(pruned)
    groups = [layer.self_attn.num_key_value_groups for layer in reloaded.model.layers[:2]]
    assert groups == [2, 1]


def test_size_model_foresees_the_measured_gqa_size() -> None:
    model = tiny_llama()
    with torch.no_grad():  # no weight exactly zero, so non-zeros are foreseeable
        for parameter in model.parameters():
            parameter.add_(torch.rand_like(parameter) * 0.01 + 0.01)
    scores = autoprune.importance(model, [], "random")
    sizes = SizeModel.of(model, autoprune.measure(model, 16))
    for config in (
        PruneConfig(heads=[2, 2, 0], ffn=[96, 40, 0], kv_heads=[1, 2, 0]),
        PruneConfig(
            heads=[4, 1, 2], ffn=[10, 96, 50], sparsity=[0.5, 0.0, 0.9], kv_heads=[2, 1, 1]
        ),
        PruneConfig(heads=[4, 2, 0], ffn=[96, 96, 7]),
        PruneConfig.dense(autoprune.describe(model)),
    ):
        measured = autoprune.measure(autoprune.prune(model, config, scores), 16)
        assert sizes.size(config) == measured


@pytest.mark.parametrize("method", ["magnitude", "taylor", "fisher", "random"])
def test_importance_on_a_decoder(method: str) -> None:
    model = tiny_llama()
    scores = autoprune.importance(model, [llama_batch(seed=1), llama_batch(seed=2)], method)
    assert [len(h) for h in scores.heads] == [HEADS] * 3
    assert [len(n) for n in scores.neurons] == [FFN] * 3
    assert scores.weights[0]["self_attn.k_proj"].shape == (KV_HEADS * HEAD_DIM, HIDDEN)
    assert scores.weights[2]["mlp.gate_proj"].shape == (FFN, HIDDEN)
    assert all(torch.all(h >= 0) and torch.all(h.isfinite()) for h in scores.heads)


def test_importance_takes_a_loss_and_restores_the_mode() -> None:
    model, batch = tiny_llama(), llama_batch()
    calls = []

    def last_token_loss(model: LlamaForCausalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(len(batch["input_ids"]))
        return model(input_ids=batch["input_ids"]).logits[:, -1].logsumexp(dim=-1).sum()

    model.train()
    scores = autoprune.importance(model, [batch], "fisher", loss=last_token_loss)
    assert calls == [3] and model.training
    default = autoprune.importance(model, [batch], "fisher")
    assert not torch.allclose(scores.heads[0], default.heads[0])

    def failing(model: LlamaForCausalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert not model.training  # scored in eval mode
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        autoprune.importance(model, [batch], "taylor", loss=failing)
    assert model.training


def test_default_loss_needs_labels() -> None:
    model, batch = tiny_llama(), llama_batch()
    del batch["labels"]
    with pytest.raises(ValueError, match="computed no loss: give batches with 'labels'"):
        autoprune.importance(model, [batch], "fisher")


# -- the configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "heads,kv_heads,message",
    [
        (
            [4, 3, 4],
            None,
            "layer 1: heads=3 with kv_heads=2: each kept key/value group must keep the same "
            "number of query heads",
        ),
        ([4, 4, 4], [3, 2, 2], r"layer 0: kv_heads=3, but the layer has 2 key/value heads"),
        ([4, 4, 2], [2, 2, 1], None),
        (
            [4, 4, 4],
            [2, 2, 1],
            "layer 2: heads=4 with kv_heads=1: a key/value group holds at most 2",
        ),
        ([0, 4, 4], [1, 2, 2], "layer 0: heads=0 with kv_heads=1: a layer keeps key/value heads"),
        ([4, 2, 4], [2, 0, 2], "layer 1: heads=2 with kv_heads=0"),
        ([4, 4, 5], [2, 2, 2], r"layer 2: heads=5, but the layer has 4 heads \(allowed 0\.\.4\)"),
    ],
)
def test_validate_names_the_layer_and_field(
    heads: list[int], kv_heads: list[int] | None, message: str | None
) -> None:
    arch = autoprune.describe(tiny_llama())
    config = PruneConfig(heads=heads, ffn=[FFN] * 3, kv_heads=kv_heads)
    if message is None:
        config.validate(arch)
        return
    with pytest.raises(PruneConfigError, match=message):
        config.validate(arch)


def test_default_kv_heads() -> None:
    llama = autoprune.describe(tiny_llama())
    config = PruneConfig(heads=[4, 2, 1], ffn=[FFN] * 3)
    assert config.key_value_heads(llama) == (2, 2, 1)
    assert PruneConfig(heads=[0, 4, 4], ffn=[FFN] * 3).key_value_heads(llama) == (0, 2, 2)


def test_bad_kv_heads_entries() -> None:
    with pytest.raises(PruneConfigError, match="kv_heads must have one entry per layer"):
        PruneConfig(heads=[4, 4], ffn=[8, 8], kv_heads=[2])
    with pytest.raises(PruneConfigError, match=r"layer 1: kv_heads=-1, expected a whole number"):
        PruneConfig(heads=[4, 4], ffn=[8, 8], kv_heads=[2, -1])
    with pytest.raises(PruneConfigError, match="key 'kv_heads' must be a list"):
        PruneConfig.from_dict({"heads": [4], "ffn": [8], "kv_heads": 2})


def test_kv_heads_json_round_trip(tmp_path) -> None:
    config = PruneConfig(
        heads=[4, 2, 0], ffn=[96, 7, 0], sparsity=[0.0, 0.5, 0.0], kv_heads=[2, 1, 0]
    )
    assert config.to_dict()["kv_heads"] == [2, 1, 0]
    assert PruneConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "prune_config.json")
    assert PruneConfig.load(tmp_path / "prune_config.json") == config
    plain = PruneConfig(heads=[4, 2], ffn=[96, 7])
    assert "kv_heads" not in plain.to_dict()  # configs written before kv_heads still load
    assert PruneConfig.from_dict({"heads": [4, 2], "ffn": [96, 7]}) == plain


def test_uniform_removes_whole_groups() -> None:
    arch = autoprune.describe(tiny_llama())
    config = PruneConfig.uniform(arch, heads=0.5, ffn=0.5)
    assert config.heads == (2, 2, 2) and config.kv_heads == (1, 1, 1) and config.ffn == (48,) * 3
    config.validate(arch)


def test_groups_are_declared_once_per_family() -> None:
    model = tiny_llama()
    groups = family_of(model).groups(model)
    assert [s.path for s in groups.head] == ["self_attn.q_proj", "self_attn.o_proj"]
    assert [s.path for s in groups.kv] == ["self_attn.k_proj", "self_attn.v_proj"]
    assert [s.path for s in groups.neuron] == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert groups.gate("head").path == "self_attn.o_proj" and groups.gate("head").width == HEAD_DIM
    assert groups.gate("neuron").path == "mlp.down_proj"
    assert list(groups.linears(model.model.layers[0])) == [
        "self_attn.q_proj",
        "self_attn.o_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
