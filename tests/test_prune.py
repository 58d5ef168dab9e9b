"""The pruning engine on tiny random models of every supported family."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, logits, tiny_batch, tiny_model

import autoprune
from autoprune import PruneConfig, PruneConfigError
from autoprune.engine.gates import gated
from autoprune.engine.measure import SizeModel
from autoprune.engine.sparsity import MaskedLinear

ATOL = 1e-5


def gates_for(scores: autoprune.Scores, config: PruneConfig) -> tuple[list, list]:
    """0/1 gates that keep the heads and neurons prune() keeps (the highest-scored)."""
    head_gates, neuron_gates = [], []
    for layer in range(config.num_layers):
        for counts, layer_scores, out in (
            (config.heads, scores.heads, head_gates),
            (config.ffn, scores.neurons, neuron_gates),
        ):
            gate = torch.zeros_like(layer_scores[layer])
            gate[torch.topk(layer_scores[layer], counts[layer]).indices] = 1.0
            out.append(gate)
    return head_gates, neuron_gates


def analytic_prunable(hidden: int, head_dim: int, heads: list[int], ffn: list[int]) -> int:
    """Parameters of q, k, v, o and both feed-forward layers, from the kept counts alone."""
    total = 0
    for h, f in zip(heads, ffn, strict=True):
        width = h * head_dim
        total += 3 * (hidden * width + width) + (width * hidden + hidden)
        total += (hidden * f + f) + (f * hidden + hidden)
    return total


@pytest.mark.parametrize("family", FAMILIES)
def test_describe_reads_the_architecture(family: str) -> None:
    arch = autoprune.describe(tiny_model(family))
    assert arch.num_layers == 3
    assert arch.heads == (4, 4, 4) and arch.kv_heads == (4, 4, 4)
    assert arch.head_dim == 8 and arch.ffn == (48, 48, 48)
    assert arch.prunable_params == analytic_prunable(32, 8, [4, 4, 4], [48, 48, 48])


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_everything_changes_nothing(family: str) -> None:
    model, batch = tiny_model(family), tiny_batch()
    scores = autoprune.importance(model, [batch], "random")
    pruned = autoprune.prune(model, PruneConfig.dense(autoprune.describe(model)), scores)
    assert torch.equal(logits(pruned, batch), logits(model, batch))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("heads,ffn", [([0, 2, 4], [48, 0, 10]), ([1, 3, 0], [5, 17, 0])])
def test_physical_pruning_equals_gating(family: str, heads: list[int], ffn: list[int]) -> None:
    model, batch = tiny_model(family), tiny_batch()
    scores = autoprune.importance(model, [batch], "fisher")
    config = PruneConfig(heads=heads, ffn=ffn)
    pruned = autoprune.prune(model, config, scores)
    head_gates, neuron_gates = gates_for(scores, config)
    with gated(model, head_gates, neuron_gates):
        reference = logits(model, batch)
    assert torch.allclose(logits(pruned, batch), reference, atol=ATOL)
    arch = autoprune.describe(pruned)
    assert list(arch.heads) == heads and list(arch.ffn) == ffn and list(arch.kv_heads) == heads
    assert arch.prunable_params == analytic_prunable(32, 8, heads, ffn)
    dense = autoprune.describe(model)
    removed = dense.prunable_params - arch.prunable_params
    assert arch.total_params == dense.total_params - removed


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_attention_modules_know_their_head_counts(family: str) -> None:
    model = tiny_model(family)
    scores = autoprune.importance(model, [], "magnitude")
    pruned = autoprune.prune(model, PruneConfig(heads=[1, 3, 4], ffn=[48] * 3), scores)
    layers = autoprune.engine.arch.family_of(pruned).layers(pruned)
    for layer, heads in zip(layers, [1, 3, 4], strict=True):
        if family == "bert":
            assert layer.attention.self.num_attention_heads == heads
            assert layer.attention.self.all_head_size == heads * 8
        else:
            assert layer.attention.n_heads == heads


def test_without_grouped_query_attention_kv_heads_are_the_heads() -> None:
    model = tiny_model("bert")
    arch = autoprune.describe(model)
    scores = autoprune.importance(model, [], "magnitude")
    implicit = PruneConfig(heads=[0, 2, 4], ffn=[48] * 3)
    explicit = PruneConfig(heads=[0, 2, 4], ffn=[48] * 3, kv_heads=[0, 2, 4])
    assert implicit.key_value_heads(arch) == (0, 2, 4)
    batch = tiny_batch()
    assert torch.equal(
        logits(autoprune.prune(model, implicit, scores), batch),
        logits(autoprune.prune(model, explicit, scores), batch),
    )
    with pytest.raises(PruneConfigError, match="layer 1: heads=2 with kv_heads=1: .* at most 1"):
        PruneConfig(heads=[0, 2, 4], ffn=[48] * 3, kv_heads=[0, 1, 4]).validate(arch)


@pytest.mark.parametrize("family", FAMILIES)
def test_input_model_is_untouched(family: str) -> None:
    model, batch = tiny_model(family), tiny_batch()
    before = logits(model, batch)
    scores = autoprune.importance(model, [batch], "magnitude")
    autoprune.prune(model, PruneConfig(heads=[0, 1, 2], ffn=[3, 0, 9], sparsity=[0.5] * 3), scores)
    assert autoprune.describe(model).heads == (4, 4, 4)
    assert torch.equal(logits(model, batch), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_gives_identical_outputs(family: str, tmp_path) -> None:
    model, batch = tiny_model(family), tiny_batch()
    scores = autoprune.importance(model, [batch], "taylor")
    config = PruneConfig(heads=[0, 3, 1], ffn=[20, 0, 48], sparsity=[0.3, 0.0, 0.6])
    pruned = autoprune.prune(model, config, scores)
    autoprune.save_pruned(pruned, tmp_path / "pruned")
    reloaded, tokenizer = autoprune.load_pruned(tmp_path / "pruned")
    assert tokenizer is None
    assert torch.equal(logits(reloaded, batch), logits(pruned, batch))
    assert autoprune.describe(reloaded) == autoprune.describe(pruned)
    assert autoprune.measure(reloaded, 16).nonzero == autoprune.measure(pruned, 16).nonzero


def test_prune_config_json_round_trip(tmp_path) -> None:
    config = PruneConfig(heads=[12, 0, 5], ffn=[1536, 7, 0], sparsity=[0.0, 0.25, 0.9])
    assert PruneConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "prune_config.json")
    assert PruneConfig.load(tmp_path / "prune_config.json") == config


def test_uniform_config_from_ratios() -> None:
    arch = autoprune.describe(tiny_model("bert"))
    config = PruneConfig.uniform(arch, heads=0.5, ffn=0.25, sparsity=0.1)
    assert config.heads == (2, 2, 2) and config.ffn == (12, 12, 12)
    assert config.sparsity == (0.1, 0.1, 0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_sparsity_is_exact_per_layer_and_survives_training(family: str) -> None:
    model, batch = tiny_model(family), tiny_batch()
    scores = autoprune.importance(model, [batch], "magnitude")
    sparsity = [0.5, 0.0, 0.73]
    pruned = autoprune.prune(
        model, PruneConfig(heads=[4, 2, 3], ffn=[48, 30, 9], sparsity=sparsity), scores
    )
    family_ = autoprune.engine.arch.family_of(pruned)
    groups = family_.groups(pruned)

    def zeros_per_layer() -> list[tuple[int, int]]:
        counts = []
        for layer in family_.layers(pruned):
            linears = groups.linears(layer).values()
            weights = [
                lin.weight * lin.mask if isinstance(lin, MaskedLinear) else lin.weight
                for lin in linears
            ]
            counts.append(
                (sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights))
            )
        return counts

    for (zeros, total), s in zip(zeros_per_layer(), sparsity, strict=True):
        assert zeros == round(s * total)
    masks_before = [m.mask.clone() for m in pruned.modules() if isinstance(m, MaskedLinear)]
    optimizer = torch.optim.AdamW(pruned.parameters(), lr=1e-2, weight_decay=0.1)
    pruned.train()
    for _ in range(3):
        loss = pruned(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for (zeros, total), s in zip(zeros_per_layer(), sparsity, strict=True):
        assert zeros == round(s * total)
    masked = [m for m in pruned.modules() if isinstance(m, MaskedLinear)]
    assert all(torch.equal(m.mask, before) for m, before in zip(masked, masks_before, strict=True))
    assert all(torch.all(m.weight[m.mask == 0] == 0) for m in masked)


def test_lowest_scored_weights_are_the_ones_zeroed() -> None:
    model, batch = tiny_model("bert"), tiny_batch()
    scores = autoprune.importance(model, [batch], "magnitude")
    pruned = autoprune.prune(
        model, PruneConfig(heads=[4] * 3, ffn=[48] * 3, sparsity=[0.4] * 3), scores
    )
    query = pruned.bert.encoder.layer[0].attention.self.query
    kept = query.weight[query.mask == 1].abs()
    dropped = model.bert.encoder.layer[0].attention.self.query.weight[query.mask == 0].abs()
    assert dropped.max() <= kept.min()


@pytest.mark.parametrize("family", FAMILIES)
def test_size_model_foresees_the_measured_size(family: str) -> None:
    model, batch = tiny_model(family), tiny_batch()
    with torch.no_grad():  # no weight or bias exactly zero, so non-zeros are foreseeable
        for parameter in model.parameters():
            parameter.add_(torch.rand_like(parameter) * 0.01 + 0.01)
    scores = autoprune.importance(model, [batch], "random")
    sizes = SizeModel.of(model, autoprune.measure(model, 16))
    for config in (
        PruneConfig(heads=[0, 2, 4], ffn=[48, 0, 10]),
        PruneConfig(heads=[1, 4, 3], ffn=[5, 17, 48], sparsity=[0.5, 0.0, 0.9]),
        PruneConfig(heads=[4, 4, 4], ffn=[48, 48, 48]),
    ):
        measured = autoprune.measure(autoprune.prune(model, config, scores), 16)
        assert sizes.size(config) == measured


def test_measure_counts_macs_and_sizes() -> None:
    model = tiny_model("bert")
    size = autoprune.measure(model, seq_len=16)
    arch = autoprune.describe(model)
    per_layer = 16 * (4 * 32 * 32 + 2 * 32 * 48) + 2 * 16 * 16 * 32
    head = 32 * 32 + 32 * 3  # pooler and classifier on the first token
    assert size.macs == 3 * per_layer + head
    assert size.params == arch.total_params and size.prunable == arch.prunable_params
    assert size.bytes == 4 * sum(t.numel() for t in model.state_dict().values())
    assert size.nonzero_total <= size.params


@pytest.mark.parametrize("method", ["magnitude", "taylor", "fisher", "random"])
def test_importance_methods_give_one_score_per_unit(method: str, tmp_path) -> None:
    model = tiny_model("bert")
    scores = autoprune.importance(model, [tiny_batch(seed=1), tiny_batch(seed=2)], method)
    assert [len(h) for h in scores.heads] == [4, 4, 4]
    assert [len(n) for n in scores.neurons] == [48, 48, 48]
    assert scores.weights[0]["attention.self.query"].shape == (32, 32)
    assert all(torch.all(h >= 0) for h in scores.heads)
    scores.save(tmp_path / "scores.safetensors")
    loaded = autoprune.Scores.load(tmp_path / "scores.safetensors")
    assert loaded.method == method
    assert all(torch.equal(a, b) for a, b in zip(loaded.heads, scores.heads, strict=True))
    assert torch.equal(loaded.weights[2]["output.dense"], scores.weights[2]["output.dense"])


def test_fisher_scores_are_per_example_squares() -> None:
    """Fisher sums squared per-example gradients (then averages over examples): a batch of two
    copies of one example scores as that example alone. Squaring the batch's summed gradient
    instead would score it twice as high."""
    model = tiny_model("bert")
    single = tiny_batch(batch_size=1)
    double = {k: v.repeat(2, *([1] * (v.dim() - 1))) for k, v in single.items()}
    one = autoprune.importance(model, [single], "fisher")
    two = autoprune.importance(model, [double], "fisher")
    for a, b in zip(one.heads, two.heads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-10)  # averaged per example: equal


# -- bad input --------------------------------------------------------------------------------


def test_too_many_heads_names_the_layer() -> None:
    arch = autoprune.describe(tiny_model("bert"))
    with pytest.raises(PruneConfigError, match=r"layer 1: heads=5.*allowed 0\.\.4"):
        PruneConfig(heads=[4, 5, 4], ffn=[48] * 3).validate(arch)
    with pytest.raises(PruneConfigError, match=r"layer 2: ffn=49"):
        PruneConfig(heads=[4] * 3, ffn=[48, 48, 49]).validate(arch)


def test_wrong_number_of_layers() -> None:
    model = tiny_model("bert")
    scores = autoprune.importance(model, [], "magnitude")
    with pytest.raises(PruneConfigError, match="config has 2 layers, the model has 3"):
        autoprune.prune(model, PruneConfig(heads=[4, 4], ffn=[48, 48]), scores)
    with pytest.raises(PruneConfigError, match="one entry per layer"):
        PruneConfig(heads=[4, 4, 4], ffn=[48, 48])


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_sparsity_outside_unit_interval(bad: float) -> None:
    with pytest.raises(
        PruneConfigError, match=r"layer 1: sparsity=.*expected a number in \[0, 1\)"
    ):
        PruneConfig(heads=[4, 4], ffn=[8, 8], sparsity=[0.0, bad])


def test_bad_config_file_names_file_and_key(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"heads": [1, 2], "ffn": [3, 4], "sparsty": [0, 0]}')
    with pytest.raises(PruneConfigError, match=r"config\.json: unknown key\(s\) \['sparsty'\]"):
        PruneConfig.load(path)
    with pytest.raises(FileNotFoundError, match="prune config not found"):
        PruneConfig.load(tmp_path / "absent.json")


def test_missing_directory_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="pruned model directory not found"):
        autoprune.load_pruned(tmp_path / "nowhere")
    with pytest.raises(autoprune.ModelNotFoundError, match="model directory not found"):
        autoprune.load_model(str(tmp_path / "nowhere"))


def test_offline_hub_id_is_a_clear_error(monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1
    with pytest.raises(autoprune.ModelNotFoundError, match="local copy"):
        autoprune.load_model("autoprune-tests/no-such-model")


def test_unsupported_model_lists_the_families() -> None:
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        word_embed_proj_dim=16,
    )
    model = OPTForCausalLM(config)
    supported = "bert, camembert, distilbert, electra, gpt2, llama"
    with pytest.raises(autoprune.UnsupportedModelError, match=f"type 'opt'.*: {supported}"):
        autoprune.describe(model)


def test_scores_for_another_model_are_refused() -> None:
    model = tiny_model("bert")
    scores = autoprune.importance(model, [], "random")
    small = autoprune.prune(model, PruneConfig(heads=[2] * 3, ffn=[48] * 3), scores)
    with pytest.raises(ValueError, match="layer 0: scores .* 4 heads .* model has 2 heads"):
        autoprune.prune(small, PruneConfig(heads=[1] * 3, ffn=[48] * 3), scores)
