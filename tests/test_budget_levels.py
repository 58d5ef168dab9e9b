"""Budget spaces of per-layer sparsity and of kept layers: exact sizes in their units, the
uniform and heuristic allocations (OWL, block influence) on the grid, size-preserving
mutations, and the choice of space from a search space file."""

from __future__ import annotations

import random

import pytest
import torch
from test_groups import tiny_llama
from test_llm_baselines import scores_with_outliers

import autoprune
from autoprune.engine.measure import SizeModel
from autoprune.engine.owl import outlier_ratios
from autoprune.engine.prune import PruneConfig
from autoprune.search.budget import BudgetSpace
from autoprune.search.budget_depth import DepthBudget
from autoprune.search.budget_sparsity import SparsityBudget, sparsity_grid
from autoprune.search.levels import BudgetError
from autoprune.search.space import SearchSpace, SearchSpaceSpec
from autoprune.search.targets import TargetEncoding, budget_space

GRID = sparsity_grid(0.0, 0.9, 0.05)


@pytest.fixture(scope="module")
def sizes() -> SizeModel:
    model = tiny_llama()
    return SizeModel.of(model, autoprune.measure(model, 16))


def mean_sparsity(space: SparsityBudget, config: PruneConfig) -> float:
    weights = [slot.weights for slot in space.slots]
    return sum(w * s for w, s in zip(weights, config.sparsity, strict=True)) / sum(weights)


def test_a_sparsity_target_is_a_mean_sparsity_and_uniform_is_every_layer_alike(sizes) -> None:
    space = SparsityBudget(sizes, "nonzero", GRID)
    assert [slot.name for slot in space.slots] == ["sparsity_0", "sparsity_1", "sparsity_2"]
    assert space.mean_sparsity(0.3) == pytest.approx(0.7)  # the llama has no biases
    uniform = space.at(0.3)
    assert uniform.sparsity == (0.7, 0.7, 0.7) and uniform.heads == sizes.arch.heads
    assert space.size(uniform) == pytest.approx(0.3, abs=space.tolerance)
    # the size model's count is what pruning gives
    model = tiny_llama()
    model = autoprune.prune(model, uniform, autoprune.importance(model, [], "magnitude"))
    measured = autoprune.measure(model, 16).ratio(sizes.dense, "nonzero")
    assert measured == pytest.approx(space.size(uniform), abs=1e-3)


def test_sparsity_allocations_stay_on_target_through_decoding_and_mutation(sizes) -> None:
    space = SparsityBudget(sizes, "nonzero", GRID)
    rng = random.Random(0)
    for target in (0.2, 0.35, 0.5, 0.8):
        child = space.at(target)
        for _ in range(200):
            child = space.mutate(child, target, rng, swaps=2)
            assert abs(space.size(child) - target) <= space.tolerance + 1e-12
            assert set(child.sparsity) <= set(GRID)
        weights = [rng.random() for _ in space.slots]
        decoded = space.decode(weights, target)
        assert abs(space.size(decoded) - target) <= space.tolerance + 1e-12
    assert space.mutate(space.at(0.5), 0.5, random.Random(1), swaps=3) != space.at(0.5)


def test_owl_on_the_grid_spares_the_layer_with_most_outliers(sizes) -> None:
    space = SparsityBudget(sizes, "nonzero", sparsity_grid(0.0, 0.95, 0.01))
    scores = scores_with_outliers([2, 20, 5])
    assert outlier_ratios(scores) == [0.002, 0.02, 0.005]
    owl = space.owl(scores, 0.4)
    assert abs(space.size(owl) - 0.4) <= space.tolerance + 1e-12
    assert mean_sparsity(space, owl) == pytest.approx(0.6, abs=0.01)
    assert owl.sparsity[1] == min(owl.sparsity) and owl.sparsity[1] == pytest.approx(0.52)
    with pytest.raises(BudgetError, match="owl: target"):
        space.owl(scores, 0.05)  # a mean of 0.95: OWL's range would leave [0, 1)


def test_sparsity_spaces_refuse_what_they_cannot_express(sizes) -> None:
    with pytest.raises(BudgetError, match="needs objectives.size: nonzero"):
        SparsityBudget(sizes, "prunable", GRID)
    with pytest.raises(BudgetError, match="at least two sparsities"):
        SparsityBudget(sizes, "nonzero", [0.5])
    space = SparsityBudget(sizes, "nonzero", GRID)
    off_grid = PruneConfig.dense(sizes.arch)
    off_grid = PruneConfig(
        heads=off_grid.heads, ffn=off_grid.ffn, sparsity=[0.5, 0.52, 0.5], kv_heads=None
    )
    with pytest.raises(BudgetError, match="layer 1: sparsity=0.52 is not on the budget grid"):
        space.levels_of(off_grid)
    with pytest.raises(BudgetError, match="keeps every head, neuron and layer"):
        space.levels_of(PruneConfig.uniform(sizes.arch, heads=0.5))
    with pytest.raises(BudgetError, match="cannot be met"):
        space.at(0.05)  # every layer at 0.9 keeps 0.1


def test_depth_drops_whole_layers_the_last_for_uniform_the_least_influential_by_influence(
    sizes,
) -> None:
    space = DepthBudget(sizes, "prunable")
    assert [slot.name for slot in space.slots] == ["layers_0", "layers_1", "layers_2"]
    assert space.tolerance == pytest.approx(1 / 6)  # half a layer of three
    assert space.at(2 / 3).layers == (True, True, False)
    assert space.by_influence(torch.tensor([0.5, 0.1, 0.3]), 2 / 3).layers == (True, False, True)
    assert space.by_influence([0.5, 0.1, 0.3], 1 / 3).layers == (True, False, False)
    rng = random.Random(0)
    seen = set()
    for _ in range(50):
        child = space.mutate(space.at(2 / 3), 2 / 3, rng)
        assert child.kept_layers().count(False) == 1
        seen.add(child.layers)
    assert seen == {(False, True, True), (True, False, True)}  # one layer back for another
    with pytest.raises(BudgetError, match="every layer is dropped"):
        space.from_levels([0, 0, 0])
    with pytest.raises(BudgetError, match="keeps a layer whole or drops it"):
        space.levels_of(PruneConfig.uniform(sizes.arch, ffn=0.5))


def test_the_search_space_file_chooses_the_budget_space(sizes) -> None:
    def spec(**dims) -> SearchSpaceSpec:
        return SearchSpaceSpec.model_validate(dims)

    heads_ffn = spec(heads={}, ffn={"step": 0.25})
    assert isinstance(budget_space(heads_ffn, sizes, "prunable"), BudgetSpace)
    sparse = budget_space(spec(sparsity={"max": 0.9, "step": 0.1}), sizes, "nonzero")
    assert isinstance(sparse, SparsityBudget)
    assert sorted(sparse.slots[0].sparsities) == list(sparsity_grid(0.0, 0.9, 0.1))
    assert isinstance(budget_space(spec(layers={}), sizes, "prunable"), DepthBudget)
    with pytest.raises(BudgetError, match="names heads/ffn and sparsity"):
        budget_space(spec(heads={}, sparsity={"max": 0.5}), sizes, "nonzero")
    # levels of a depth space go through the encoding like any other
    encoding = TargetEncoding(budget_space(spec(layers={}), sizes, "prunable"), 2 / 3, "levels")
    params = encoding.params(encoding.space.at(2 / 3))
    assert params == {"layers_0": 1, "layers_1": 1, "layers_2": 0}
    assert encoding.config(params).layers == (True, True, False)


def test_a_free_search_space_searches_which_layers_to_keep(sizes) -> None:
    space = SearchSpace(SearchSpaceSpec.model_validate({"layers": {}}), sizes.arch)
    assert set(space.distributions()) == {"layers_0", "layers_1", "layers_2"}
    config = space.to_config({"layers_0": 1, "layers_1": 0, "layers_2": 1})
    assert config.layers == (True, False, True) and config.heads == (4, 0, 4)
    smallest, largest = space.extremes()
    assert smallest.layers == (True, False, False) and largest.layers is None
