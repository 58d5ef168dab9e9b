"""The GPT-2 family (``Conv1D`` layers, query, key and value fused in ``c_attn``), and greedy
generation of pruned decoders, on tiny random models."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_groups import llama_batch, scores_with_heads, tiny_llama
from test_recovery import assert_no_block_got_worse, calibration_of
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, PreTrainedModel
from transformers.pytorch_utils import Conv1D

import autoprune
from autoprune import PruneConfig
from autoprune.engine.arch import family_of
from autoprune.engine.gates import gated
from autoprune.engine.measure import SizeModel
from autoprune.engine.recovery import recover
from autoprune.engine.sparsity import MaskedConv1D, effective_weight

ATOL = 1e-5
HIDDEN, HEADS, HEAD_DIM, FFN, VOCAB = 32, 4, 8, 48, 128

# (heads, ffn): a layer keeping no head, one keeping no neuron, the rest in between.
SHAPES = [([0, 2, 4], [48, 0, 10]), ([1, 3, 0], [5, 17, 0]), ([4, 4, 4], [48, 48, 48])]


def tiny_gpt2(attn_implementation: str = "sdpa", seed: int = 0) -> GPT2LMHeadModel:
    """A randomly initialized 3-layer GPT-2: 4 heads of 8, 48 neurons, tied embeddings."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=HIDDEN,
        n_layer=3,
        n_head=HEADS,
        n_inner=FFN,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = attn_implementation
    return GPT2LMHeadModel(config).eval()


def logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits  # (batch, seq, vocab)


def analytic_prunable(heads: list[int], ffn: list[int]) -> int:
    """Parameters of c_attn, attn.c_proj, c_fc and mlp.c_proj (all with biases)."""
    total = 0
    for h, f in zip(heads, ffn, strict=True):
        width = h * HEAD_DIM
        total += (HIDDEN * 3 * width + 3 * width) + (width * HIDDEN + HIDDEN)
        total += (HIDDEN * f + f) + (f * HIDDEN + HIDDEN)
    return total


def greedy(model: PreTrainedModel, use_cache: bool = True) -> torch.Tensor:
    prompt = llama_batch(batch_size=2, seq_len=5, seed=3)["input_ids"] % VOCAB
    return model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=8,
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=0,
    )  # (batch, 5 + 8)


def test_describe_reads_the_fused_conv1d_layout() -> None:
    model = tiny_gpt2()
    arch = autoprune.describe(model)
    assert arch.family == "gpt2" and arch.num_layers == 3 and arch.hidden_size == HIDDEN
    assert arch.heads == arch.kv_heads == (HEADS,) * 3 and arch.head_dim == HEAD_DIM
    assert arch.ffn == (FFN,) * 3
    assert arch.prunable_params == analytic_prunable([HEADS] * 3, [FFN] * 3)
    groups = family_of(model).groups(model)
    layer = model.transformer.h[0]
    assert isinstance(groups.linears(layer)["attn.c_attn"], Conv1D)
    assert list(groups.linears(layer)) == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("heads,ffn", SHAPES)
def test_physical_pruning_equals_gating(
    attn_implementation: str, heads: list[int], ffn: list[int]
) -> None:
    model, batch = tiny_gpt2(attn_implementation), llama_batch()
    scores = autoprune.importance(model, [batch], "fisher")
    config = PruneConfig(heads=heads, ffn=ffn)
    pruned = autoprune.prune(model, config, scores)

    head_gates, neuron_gates = [], []
    for layer in range(3):
        for counts, layer_scores, gates in (
            (heads, scores.heads, head_gates),
            (ffn, scores.neurons, neuron_gates),
        ):
            gate = torch.zeros_like(layer_scores[layer])
            gate[torch.topk(layer_scores[layer], counts[layer]).indices] = 1.0
            gates.append(gate)
    with gated(model, head_gates, neuron_gates):
        reference = logits(model, batch)
    assert torch.allclose(logits(pruned, batch), reference, atol=ATOL)

    arch = autoprune.describe(pruned)
    assert list(arch.heads) == heads == list(arch.kv_heads) and list(arch.ffn) == ffn
    assert arch.prunable_params == analytic_prunable(heads, ffn)
    for layer, n_heads in zip(pruned.transformer.h, heads, strict=True):
        if n_heads:
            assert layer.attn.num_heads == n_heads and layer.attn.head_dim == HEAD_DIM
            assert layer.attn.split_size == n_heads * HEAD_DIM
            assert layer.attn.c_attn.weight.shape == (HIDDEN, 3 * n_heads * HEAD_DIM)


def test_the_kept_heads_keep_their_query_key_and_value_rows() -> None:
    model = tiny_gpt2()
    scores = autoprune.importance(model, [], "magnitude")
    scores.heads[0] = torch.tensor([0.0, 3.0, 1.0, 2.0])
    pruned = autoprune.prune(model, PruneConfig(heads=[2, 4, 4], ffn=[FFN] * 3), scores)
    dense = model.transformer.h[0].attn.c_attn.weight  # (hidden, q | k | v)
    kept = torch.cat([torch.arange(1 * HEAD_DIM, 2 * HEAD_DIM), torch.arange(24, 32)])  # heads 1, 3
    expected = torch.cat([dense[:, kept + block * HIDDEN] for block in range(3)], dim=1)
    assert torch.equal(pruned.transformer.h[0].attn.c_attn.weight, expected)


def test_input_model_is_untouched() -> None:
    model, batch = tiny_gpt2(), llama_batch()
    before = logits(model, batch)
    scores = autoprune.importance(model, [batch], "magnitude")
    autoprune.prune(model, PruneConfig([0, 1, 2], [3, 0, 9], sparsity=[0.5] * 3), scores)
    assert autoprune.describe(model).heads == (HEADS,) * 3
    assert all(layer.attn.split_size == HIDDEN for layer in model.transformer.h)
    assert torch.equal(logits(model, batch), before)


def test_sparsity_masks_conv1d_weights() -> None:
    model, batch = tiny_gpt2(), llama_batch()
    scores = autoprune.importance(model, [batch], "magnitude")
    sparsity = [0.5, 0.0, 0.7]
    pruned = autoprune.prune(model, PruneConfig([4, 2, 3], [48, 30, 9], sparsity), scores)
    family = family_of(pruned)
    for layer, s in zip(family.layers(pruned), sparsity, strict=True):
        weights = [effective_weight(p) for p in family.groups(pruned).linears(layer).values()]
        total = sum(w.numel() for w in weights)
        assert sum(int((w == 0).sum()) for w in weights) == round(s * total)
    c_fc = pruned.transformer.h[0].mlp.c_fc
    assert isinstance(c_fc, MaskedConv1D) and c_fc.mask.shape == c_fc.weight.shape
    dropped = model.transformer.h[0].mlp.c_fc.weight[c_fc.mask == 0].abs()
    assert dropped.max() <= c_fc.weight[c_fc.mask == 1].abs().min()


def test_save_then_load_gives_identical_logits(tmp_path) -> None:
    model, batch = tiny_gpt2(), llama_batch()
    scores = autoprune.importance(model, [batch], "taylor")
    config = PruneConfig(heads=[2, 0, 4], ffn=[30, 48, 0], sparsity=[0.3, 0.0, 0.5])
    pruned = autoprune.prune(model, config, scores)
    autoprune.save_pruned(pruned, tmp_path / "pruned")
    recorded = json.loads((tmp_path / "pruned" / "config.json").read_text())["autoprune"]
    assert recorded["family"] == "gpt2" and recorded["heads"] == [2, 0, 4]
    reloaded, _ = autoprune.load_pruned(tmp_path / "pruned")
    assert torch.equal(logits(reloaded, batch), logits(pruned, batch))
    assert autoprune.describe(reloaded) == autoprune.describe(pruned)
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight  # still tied


@pytest.mark.parametrize("method", ["magnitude", "taylor", "fisher", "random"])
def test_weight_scores_are_out_by_in(method: str) -> None:
    model = tiny_gpt2()
    scores = autoprune.importance(model, [llama_batch(seed=1)], method)
    assert scores.weights[0]["attn.c_attn"].shape == (3 * HIDDEN, HIDDEN)
    assert scores.weights[2]["mlp.c_proj"].shape == (HIDDEN, FFN)
    assert all(torch.all(h >= 0) and torch.all(h.isfinite()) for h in scores.heads)


def test_size_model_foresees_the_measured_size() -> None:
    model = tiny_gpt2()
    with torch.no_grad():  # no weight exactly zero, so non-zeros are foreseeable
        for parameter in model.parameters():
            parameter.add_(torch.rand_like(parameter) * 0.01 + 0.01)
    scores = autoprune.importance(model, [], "random")
    sizes = SizeModel.of(model, autoprune.measure(model, 16))
    for heads, ffn in SHAPES:
        config = PruneConfig(heads=heads, ffn=ffn, sparsity=[0.0, 0.4, 0.9])
        measured = autoprune.measure(autoprune.prune(model, config, scores), 16)
        assert sizes.size(config) == measured
        assert measured.prunable == analytic_prunable(heads, ffn)


def test_no_block_is_worse_after_recovery() -> None:
    dense = tiny_gpt2()
    batches = [llama_batch(seed=s) for s in range(2)]
    scores = autoprune.importance(dense, batches[:1], "magnitude")
    config = PruneConfig(heads=[0, 3, 2], ffn=[5, 0, 30], sparsity=[0.3, 0.0, 0.5])
    pruned = autoprune.prune(dense, config, scores)
    calibration = calibration_of(dense, batches)
    assert_no_block_got_worse(pruned, recover(copy.deepcopy(pruned), calibration), calibration)


# -- generation -------------------------------------------------------------------------------


def test_keeping_everything_generates_the_dense_tokens() -> None:
    for model, scores in (
        (tiny_gpt2(), autoprune.importance(tiny_gpt2(), [], "random")),
        (tiny_llama(), scores_with_heads(tiny_llama())),
    ):
        dense = PruneConfig.dense(autoprune.describe(model))
        assert torch.equal(greedy(autoprune.prune(model, dense, scores)), greedy(model))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_pruned_decoders_decode_with_the_cache_as_without(family: str) -> None:
    """The first layer keeps no head: its cache entries still count the tokens (models read
    the cache's length from its first layer)."""
    if family == "gpt2":
        model = tiny_gpt2()
        scores = autoprune.importance(model, [], "magnitude")
        config = PruneConfig(heads=[0, 2, 3], ffn=[10, 0, 48], sparsity=[0.0, 0.0, 0.5])
    else:
        model = tiny_llama()
        scores = scores_with_heads(model)
        config = PruneConfig(heads=[0, 2, 2], ffn=[10, 0, 96], kv_heads=[0, 1, 2])
    pruned = autoprune.prune(model, config, scores)
    ids = llama_batch(batch_size=2, seq_len=8)["input_ids"]
    cache = DynamicCache(config=pruned.config)
    with torch.no_grad():
        full = pruned(input_ids=ids).logits[:, -1]  # (batch, vocab)
        pruned(input_ids=ids[:, :7], cache=cache, use_cache=True)
        assert cache.get_seq_length() == 7
        step = pruned(input_ids=ids[:, 7:], cache=cache, use_cache=True).logits[:, -1]
    assert torch.allclose(step, full, atol=ATOL)
    tokens = greedy(pruned)
    assert tokens.shape == (2, 13)
    assert torch.equal(tokens, greedy(pruned, use_cache=False))
