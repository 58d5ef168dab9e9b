"""Decoder baselines: OWL's per-layer sparsity from outlier ratios, ShortGPT's block
influence on a tiny Llama, and both (with uniform Wanda) trained into a tiny
language-modelling run, then read by pareto, compare and export."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import screening_trials, tiny_lm_study
from test_decoder_importance import batches
from test_groups import tiny_llama

import autoprune
from autoprune import cli
from autoprune.engine.influence import block_influence, least_influential
from autoprune.engine.owl import outlier_ratios, owl_sparsity
from autoprune.engine.scores import Scores
from autoprune.reports.results import load_run
from autoprune.run.session import open_run
from autoprune.search.targets import budget_space
from autoprune.workflow import run_baselines, run_search


def scores_with_outliers(counts: list[int]) -> Scores:
    """Per layer, 1,000 weight scores of 1 but ``counts[l]`` of 50: with ``M = 5`` exactly
    those are outliers (the mean stays below 2 for up to 20 of them)."""
    weights = []
    for count in counts:
        values = torch.ones(1000)
        values[:count] = 50.0
        weights.append({"mlp.down_proj": values[:600].view(6, 100), "o": values[600:].view(4, 100)})
    empty = [torch.zeros(0) for _ in counts]
    return Scores("activation", empty, empty, weights, scope="row")


def test_outlier_ratios_count_scores_far_above_the_layer_mean() -> None:
    assert outlier_ratios(scores_with_outliers([0, 5, 20])) == [0.0, 0.005, 0.02]
    assert outlier_ratios(scores_with_outliers([5]), threshold=100.0) == [0.0]
    with pytest.raises(ValueError, match="threshold must be positive"):
        outlier_ratios(scores_with_outliers([5]), threshold=0.0)


@pytest.mark.parametrize("target", [0.5, 0.6, 0.7])
def test_owl_keeps_the_target_mean_within_lam_and_spares_outlier_layers(target: float) -> None:
    outliers = [0.004, 0.005, 0.009, 0.012, 0.025, 0.006]
    sparsity = owl_sparsity(outliers, target)
    assert sum(sparsity) / len(sparsity) == pytest.approx(target, abs=1e-12)
    assert all(target - 0.08 - 1e-12 <= s <= target + 0.08 + 1e-12 for s in sparsity)
    assert min(sparsity) == pytest.approx(target - 0.08)  # the most outliers: on the bound
    ranked = sorted(range(len(outliers)), key=lambda layer: outliers[layer])
    assert [sparsity[layer] for layer in ranked] == sorted(sparsity, reverse=True)
    assert owl_sparsity([0.01] * 4, target) == [target] * 4
    assert owl_sparsity(outliers, target, lam=0.0) == [target] * len(outliers)


def test_owl_refuses_what_it_cannot_honour() -> None:
    with pytest.raises(ValueError, match=r"would span \[-0.03, 0.13\], which must lie within"):
        owl_sparsity([0.1, 0.2], 0.05)
    with pytest.raises(ValueError, match="one outlier ratio per layer"):
        owl_sparsity([], 0.5)


def test_block_influence_drops_a_layer_made_identity_first() -> None:
    model = tiny_llama()
    influence = block_influence(model, batches())
    assert influence.shape == (3,) and bool(((influence >= 0) & (influence <= 2)).all())
    layer = model.model.layers[1]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()  # the layer now passes its input on unchanged
    influence = block_influence(model, batches())
    assert float(influence[1]) == pytest.approx(0.0, abs=1e-6)
    assert int(influence.argmin()) == 1 and float(influence.max()) > 1e-3
    assert least_influential(influence, 1) == [True, False, True]
    assert least_influential(influence, 0) == [True, True, True]
    with pytest.raises(ValueError, match=r"remove must be in \[0, 2\]"):
        least_influential(influence, 3)
    with pytest.raises(ValueError, match="needs calibration tokens"):
        block_influence(model, [])
    assert not model.training


def test_owl_ratios_from_wanda_scores_prune_each_row_of_a_tiny_llama() -> None:
    model = tiny_llama()
    scores = autoprune.importance(
        model, batches(), "activation", loss=lambda m, b: m(**b).logits.sum()
    )
    sparsity = owl_sparsity(outlier_ratios(scores), 0.5)
    arch = autoprune.describe(model)
    config = autoprune.PruneConfig.uniform(arch)
    config = autoprune.PruneConfig(config.heads, config.ffn, sparsity, config.kv_heads)
    pruned = autoprune.prune(model, config, scores)
    for layer, ratio in zip(pruned.model.layers, sparsity, strict=True):
        mask = layer.mlp.down_proj.mask  # (out, in): every row zeroes the same count
        assert set((mask == 0).sum(dim=1).tolist()) == {round(ratio * mask.shape[1])}


def test_decoder_baselines_are_trained_read_compared_and_exported(tmp_path, capsys) -> None:
    study = tiny_lm_study(
        tmp_path,
        importance={"method": "activation", "samples": 8, "batch_size": 4},
        objectives={"size": "nonzero", "reference": 1000.0},
        retrain={"steps": 0, "batch_size": 4, "top_k": 8},  # retrain-free
    )
    out = tmp_path / "run"
    run_baselines(study, out, targets=[("uniform-sparsity", 0.5), ("uniform-sparsity", 0.6)])
    command = ["-q", "baseline", str(out), "--kind", "owl", "--targets", "0.5,0.6"]
    assert cli.main(command) == 0
    assert "owl front" in capsys.readouterr().out
    assert (
        cli.main(["-q", "baseline", str(out), "--kind", "block-influence", "--targets", "0.5"]) == 0
    )
    assert "block-influence front" in capsys.readouterr().out
    run = load_run(out)
    arch = autoprune.describe(open_run(out).prepared.model)
    for kind in ("uniform-sparsity", "owl"):
        trials = run.complete(kind).sort_values("target")
        assert trials["target"].tolist() == [0.5, 0.6] and (trials["retrain_steps"] == 0).all()
        for sparsity, target in zip(trials["sparsity"], trials["target"], strict=True):
            assert sum(sparsity) / len(sparsity) == pytest.approx(target)
        assert list(trials["heads"].iloc[0]) == list(arch.heads)  # nothing structured removed
    assert len(set(run.complete("owl")["sparsity"].iloc[0])) == arch.num_layers
    assert (run.complete("owl")["size"] < 0.9).all()  # in nonzero weights
    (depth,) = run.complete("block-influence").itertuples()
    assert depth.target == 0.5 and depth.layers.count(False) == 1

    assert cli.main(["pareto", str(out), "--kind", "owl", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["front"]
    assert cli.main(["compare", str(out), "--format", "json", "--resamples", "20"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["setting"], r["method"], r["target"]) for r in rows} == {
        ("unstructured", "uniform-sparsity", 0.5),
        ("unstructured", "owl", 0.5),
        ("unstructured", "uniform-sparsity", 0.6),
        ("unstructured", "owl", 0.6),
        ("depth", "block-influence", 0.5),
    }
    for row in rows:
        assert row["against"] == ("uniform-sparsity" if row["method"] == "owl" else None)
    exported = tmp_path / "exported"
    export = ["-q", "export", str(out), "--kind", "block-influence", "--trial", str(depth.trial)]
    assert cli.main([*export, "--out", str(exported)]) == 0
    model, _ = autoprune.load_pruned(exported)
    assert autoprune.describe(model).num_layers == arch.num_layers - 1


def test_decoder_baselines_refuse_what_they_cannot_build(tmp_path, capsys) -> None:
    study = tiny_lm_study(tmp_path, retrain={"steps": 0, "batch_size": 4, "top_k": 8})
    out = tmp_path / "run"
    run_baselines(study, out)  # prepares the run (fisher scores), trains nothing
    for kind, target, message in (
        ("owl", "0.5", "owl reads Wanda scores: the study's importance.method is 'fisher'"),
        ("block-influence", "0.2", "block-influence: target 0.2 removes 0 of 2 layers"),
        ("uniform-sparsity", "1.0", "uniform-sparsity: target 1.0 is a sparsity, in"),
    ):
        assert cli.main(["baseline", str(out), "--kind", kind, "--targets", target]) == 2
        assert message in capsys.readouterr().err
    assert load_run(out).trials.empty


@pytest.mark.parametrize(
    ("space", "size", "target", "heuristic"),
    [
        ({"sparsity": {"min": 0.0, "max": 0.9, "step": 0.05}}, "nonzero", 0.4, "owl"),
        ({"layers": {}}, "prunable", 0.5, "block-influence"),
    ],
)
def test_a_targeted_search_allocates_sparsity_or_layers_beside_its_heuristic(
    tmp_path, space, size, target, heuristic
) -> None:
    """The evolutionary search in a sparsity or depth budget space: every candidate on
    target and refit by recovery, the space's heuristic among the starts and the finalists."""
    space_file = tmp_path / "levels.yaml"
    space_file.write_text(json.dumps(space))
    study = tiny_lm_study(
        tmp_path,
        search_space=str(space_file),
        importance={"method": "activation", "samples": 8, "batch_size": 4},
        objectives={"size": size, "reference": 1000.0, "targets": [target]},
        controller={"name": "evo", "seed": 0, "options": {"swaps": 1}},
        screening={  # candidates refit by recovery, depth-pruned ones too
            "fitness": "kl",
            "candidates": 6,
            "offspring": 2,
            "schedule": [[4, 1]],
            "recovery_examples": 4,
        },
        retrain={"steps": 0, "batch_size": 4, "top_k": 8},
    )
    out = tmp_path / "run"
    run_search(study, out)
    screened = screening_trials(out, target)
    assert len(screened) == 6
    tolerance = budget_space(open_run(out).space.spec, open_run(out).sizes, size).tolerance
    for trial in screened:
        assert abs(trial.user_attrs[f"ratio_{size}"] - target) <= tolerance + 1e-9
        assert trial.user_attrs["recovered"]
    run = load_run(out)
    finalists = run.complete("search")
    origins = [origin for found in finalists["origins"] for origin in found]
    assert {"screened", "uniform", heuristic} <= set(origins)
    best = run.best_at(target, "search")
    assert best is not None and best["metric_test"] > 1.0  # a perplexity
