"""Recovery without retraining (least-squares rescaling and bias compensation), on tiny models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, logits, tiny_batch, tiny_model
from test_groups import llama_batch, scores_with_heads, tiny_llama
from transformers import PreTrainedModel

import autoprune
from autoprune import PruneConfig
from autoprune.engine.arch import family_of
from autoprune.engine.recovery import (
    BLOCKS,
    Calibration,
    projection,
    reconstruction_errors,
    recover,
)


def inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def calibration_of(model: PreTrainedModel, batches: list[dict[str, torch.Tensor]]) -> Calibration:
    return Calibration.record(model, [inputs(b) for b in batches])


def half_pruned_bert() -> tuple[PreTrainedModel, PreTrainedModel, Calibration]:
    """A tiny BERT, its uniform half (2 of 4 heads, 24 of 48 neurons) and a calibration."""
    dense = tiny_model("bert")
    batches = [tiny_batch(8, 12, seed=s) for s in range(3)]
    scores = autoprune.importance(dense, batches[:1], "magnitude")
    config = PruneConfig.uniform(autoprune.describe(dense), heads=0.5, ffn=0.5)
    return dense, autoprune.prune(dense, config, scores), calibration_of(dense, batches)


def assert_no_block_got_worse(
    pruned: PreTrainedModel, recovered: PreTrainedModel, calibration: Calibration
) -> None:
    """The guarantee: each block's refit projection, given the inputs it receives in the
    recovered model, is no worse than the projection it replaced, on the same inputs."""
    after = reconstruction_errors(recovered, calibration)
    family = family_of(recovered)
    for layer in range(calibration.num_layers):
        for block in BLOCKS:
            path = family.groups(recovered).gate(block).path
            swapped = copy.deepcopy(recovered)
            original = copy.deepcopy(projection(pruned, layer, block))
            family.layers(swapped)[layer].set_submodule(path, original)
            before = reconstruction_errors(swapped, calibration)[layer][block]
            assert after[layer][block] <= before + 1e-9, (layer, block)


def test_recovery_reduces_every_blocks_error_on_a_half_pruned_bert() -> None:
    _, pruned, calibration = half_pruned_bert()
    before = reconstruction_errors(pruned, calibration)
    recovered = recover(copy.deepcopy(pruned), calibration)
    after = reconstruction_errors(recovered, calibration)
    for layer in range(calibration.num_layers):
        for block in BLOCKS:
            assert after[layer][block] < before[layer][block], (layer, block)
    assert_no_block_got_worse(pruned, recovered, calibration)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_block_is_worse_after_recovery(family: str) -> None:
    """Every family; layers keeping no head, no neuron, and masked (sparse) weights."""
    dense = tiny_model(family)
    batches = [tiny_batch(8, 12, seed=s) for s in range(2)]
    scores = autoprune.importance(dense, batches[:1], "magnitude")
    config = PruneConfig(heads=[0, 3, 2], ffn=[5, 0, 30], sparsity=[0.3, 0.0, 0.5])
    pruned = autoprune.prune(dense, config, scores)
    calibration = calibration_of(dense, batches)
    assert_no_block_got_worse(pruned, recover(copy.deepcopy(pruned), calibration), calibration)


def test_recovery_fits_projections_without_a_bias() -> None:
    """Llama's output projections have no bias: the scales alone are fit."""
    dense = tiny_llama()
    config = PruneConfig(heads=[2, 2, 0], ffn=[96, 40, 0], kv_heads=[1, 2, 0])
    pruned = autoprune.prune(dense, config, scores_with_heads(dense))
    calibration = calibration_of(dense, [llama_batch(seed=s) for s in range(2)])
    recovered = recover(copy.deepcopy(pruned), calibration)
    assert projection(recovered, 0, "head").bias is None
    assert_no_block_got_worse(pruned, recovered, calibration)


def test_a_depth_pruned_model_is_fit_to_the_layers_it_kept() -> None:
    dense = tiny_llama()
    config = PruneConfig(heads=[4, 4, 4], ffn=[96, 40, 96], layers=[True, False, True])
    pruned = autoprune.prune(dense, config, scores_with_heads(dense))
    calibration = calibration_of(dense, [llama_batch(seed=s) for s in range(2)])
    kept = config.kept_layers()
    before = reconstruction_errors(pruned, calibration, kept)
    recovered = recover(copy.deepcopy(pruned), calibration, kept=kept)
    after = reconstruction_errors(recovered, calibration, kept)
    assert len(after) == 2
    for layer, block in ((0, "head"), (0, "neuron"), (1, "head"), (1, "neuron")):
        assert after[layer][block] <= before[layer][block] + 1e-9, (layer, block)
    with pytest.raises(ValueError, match="pruned has 2 layers, the calibration's dense model 3"):
        recover(copy.deepcopy(pruned), calibration)
    with pytest.raises(ValueError, match="the kept-layer flags keep 3"):
        recover(copy.deepcopy(pruned), calibration, kept=[True, True, True])


def test_the_dense_model_is_left_as_it_is() -> None:
    dense = tiny_model("bert")
    batches = [tiny_batch(8, 12, seed=s) for s in range(2)]
    calibration = calibration_of(dense, batches)
    recovered = recover(copy.deepcopy(dense), calibration)
    torch.testing.assert_close(logits(recovered, batches[0]), logits(dense, batches[0]))


def test_a_recovered_model_keeps_its_shapes_and_round_trips(tmp_path: Path) -> None:
    _, pruned, calibration = half_pruned_bert()
    recovered = recover(copy.deepcopy(pruned), calibration)
    assert autoprune.describe(recovered) == autoprune.describe(pruned)
    batch = tiny_batch(seed=7)
    assert not torch.allclose(logits(recovered, batch), logits(pruned, batch))
    loaded, _ = autoprune.load_pruned(autoprune.save_pruned(recovered, tmp_path / "recovered"))
    assert torch.equal(logits(loaded, batch), logits(recovered, batch))


def test_bad_arguments_are_named() -> None:
    dense, pruned, calibration = half_pruned_bert()
    with pytest.raises(ValueError, match="ridge"):
        recover(pruned, calibration, ridge=0.0)
    with pytest.raises(ValueError, match="batches"):
        Calibration.record(dense, [])
    config = copy.deepcopy(dense.config)
    config.num_hidden_layers = 2
    with pytest.raises(ValueError, match="2 layers"):
        recover(type(dense)(config).eval(), calibration)
