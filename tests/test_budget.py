"""The budget space: cost-equal levels, exact-size allocations (uniform, decoded, mutated,
global) within half a unit of the target, grouped-query attention kept whole."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_model
from test_groups import tiny_llama
from transformers import BertConfig, BertForSequenceClassification

import autoprune
from autoprune.engine.measure import SizeModel, SizeUnit
from autoprune.search.budget import Allocation, BudgetError, BudgetSpace

UNITS: list[SizeUnit] = ["prunable", "params", "bytes", "macs"]
SEQ_LEN = 16


def space_of(model, unit: SizeUnit = "prunable") -> BudgetSpace:
    return BudgetSpace(SizeModel.of(model, autoprune.measure(model, SEQ_LEN)), unit)


def targets(space: BudgetSpace, count: int = 25) -> list[float]:
    """``count`` targets spread over everything the space can reach, both ends included."""
    low = space.smallest
    return [low + (1.0 - low) * i / (count - 1) for i in range(count)]


def assert_within(space: BudgetSpace, allocation: Allocation, target: float) -> None:
    """On target to the space's tolerance, within each slot's bounds, a valid config."""
    assert abs(space.size(allocation) - target) <= space.tolerance + 1e-12
    for layer, (heads, neurons) in enumerate(
        zip(allocation.heads, allocation.neurons, strict=True)
    ):
        assert 0 <= heads <= space.arch.heads[layer] and 0 <= neurons <= space.arch.ffn[layer]
    space.to_config(allocation).validate(space.arch)


@pytest.fixture(scope="module")
def bert() -> BertForSequenceClassification:
    return tiny_model("bert")


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def test_a_neuron_block_costs_about_one_head_in_the_chosen_unit(bert) -> None:
    # tiny BERT: hidden 32, heads of 8, 48 neurons. One head with its key and value rows
    # holds 4 * 32 * 8 + 3 * 8 = 1048 parameters, one neuron 2 * 32 + 1 = 65: 16 neurons.
    prunable = space_of(bert, "prunable")
    assert [s.counts for s in prunable.slots if s.dimension == "ffn"] == [(0, 16, 32, 48)] * 3
    assert [s.counts for s in prunable.slots if s.dimension == "heads"] == [(0, 1, 2, 3, 4)] * 3
    assert prunable.unit_cost == 1048
    # In MACs a head also weighs its scores and weighted values: 2 * 16 * 16 * 8 for 16
    # tokens, so a block is 20 neurons and the last level reaches the dense width.
    macs = space_of(bert, "macs")
    assert macs.slots[3].counts == (0, 20, 40, 48)
    assert [s.name for s in macs.slots] == [
        *(f"heads_{layer}" for layer in range(3)),
        *(f"ffn_{layer}" for layer in range(3)),
    ]


def test_minilm_shaped_uniform_allocation_is_the_familiar_one() -> None:
    # MiniLM's shapes (6 layers of 12 heads of 32, 1536 neurons): one head = 64 neurons, and
    # a quarter of the prunable parameters is 3 heads and 384 neurons in every layer.
    config = BertConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    )
    torch.manual_seed(0)
    space = space_of(BertForSequenceClassification(config).eval())
    assert space.slots[6].counts[1] == 64
    assert space.at(0.25) == Allocation(heads=(3,) * 6, neurons=(384,) * 6)
    assert space.at(0.5) == Allocation(heads=(6,) * 6, neurons=(768,) * 6)


@pytest.mark.parametrize("unit", UNITS)
def test_uniform_allocations_meet_every_target(bert, unit: SizeUnit) -> None:
    space = space_of(bert, unit)
    for target in targets(space):
        allocation = space.at(target)
        assert_within(space, allocation, target)
        ones = space.decode([1.0] * len(space.slots), target)
        assert ones == allocation == space.decode([0.3] * len(space.slots), target)
    dense = space.at(1.0)
    assert dense.heads == space.arch.heads and dense.neurons == space.arch.ffn
    assert space.at(space.smallest) == Allocation(heads=(0,) * 3, neurons=(0,) * 3)


def test_size_is_the_size_model_and_the_measured_size(bert) -> None:
    sizes = SizeModel.of(bert, autoprune.measure(bert, SEQ_LEN))
    scores = autoprune.importance(bert, [], "magnitude")
    rng = random.Random(0)
    for unit in UNITS:
        space = BudgetSpace(sizes, unit)
        for _ in range(2):
            weights = [rng.random() for _ in space.slots]
            allocation = space.decode(weights, rng.uniform(space.smallest, 1.0))
            config = space.to_config(allocation)
            assert space.size(allocation) == sizes.size(config).ratio(sizes.dense, unit)
            pruned = autoprune.prune(bert, config, scores)
            assert space.size(allocation) == autoprune.measure(pruned, SEQ_LEN).ratio(
                sizes.dense, unit
            )


@pytest.mark.parametrize("unit", ["prunable", "macs"])
def test_decoded_weights_always_land_on_target(bert, llama, unit: SizeUnit) -> None:
    rng = random.Random(1)
    for model in (bert, llama):
        space = space_of(model, unit)
        for _ in range(400):
            target = rng.uniform(space.smallest, 1.0)
            weights = [rng.choice([0.0, 1.0, rng.random()]) for _ in space.slots]
            assert_within(space, space.decode(weights, target), target)


def test_decode_follows_the_weights(bert) -> None:
    space = space_of(bert)
    favour_layer_1 = [0.1, 1.0, 0.1, 0.1, 0.1, 0.1]
    allocation = space.decode(favour_layer_1, 0.4)
    assert allocation.heads[1] == 4 and allocation.heads[0] < 4
    nothing_to_attention = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    allocation = space.decode(nothing_to_attention, 0.3)
    assert allocation.heads == (0, 0, 0) and sum(allocation.neurons) > 0
    # zero weights get a share once every other slot is full
    allocation = space.decode(nothing_to_attention, 0.8)
    assert allocation.neurons == (48, 48, 48) and sum(allocation.heads) > 0
    assert_within(space, space.decode([0.0] * 6, 0.5), 0.5)


@pytest.mark.parametrize("unit", ["prunable", "macs"])
def test_mutations_keep_the_size_on_target(bert, llama, unit: SizeUnit) -> None:
    for model in (bert, llama):
        space = space_of(model, unit)
        for seed, target in enumerate((0.15, 0.25, 0.5)):
            rng = random.Random(seed)
            parent = space.at(target)
            changed = 0
            for _ in range(1000):
                child = space.mutate(parent, target, rng, swaps=rng.randint(1, 4))
                assert_within(space, child, target)
                changed += child != parent
                parent = child if rng.random() < 0.5 else parent  # walk, and branch
            assert changed > 800  # swaps can undo each other


def test_a_swap_moves_one_level(bert) -> None:
    space = space_of(bert)
    parent = space.at(0.5)
    child = space.mutate(parent, 0.5, random.Random(3), swaps=1)
    moved = [abs(a - b) for a, b in zip(parent.heads, child.heads, strict=True)]
    moved += [abs(a - b) // 16 for a, b in zip(parent.neurons, child.neurons, strict=True)]
    assert sorted(moved) == [0, 0, 0, 0, 1, 1]
    again = space.mutate(parent, 0.5, random.Random(3), swaps=1)
    assert again == child
    assert space.mutate(parent, 0.5, random.Random(3), swaps=0) == parent


def test_grouped_query_attention_moves_whole_groups(llama) -> None:
    # 4 query heads over 2 key/value groups: a level is one group with its 2 query heads.
    space = space_of(llama)
    assert [s.counts for s in space.slots if s.dimension == "heads"] == [(0, 2, 4)] * 3
    allocation = space.at(0.5)
    config = space.to_config(allocation)
    assert config.kv_heads == tuple(h // 2 for h in config.heads)
    scores = autoprune.importance(llama, [], "magnitude")
    pruned = autoprune.prune(llama, config, scores)
    assert autoprune.describe(pruned).heads == allocation.heads
    assert autoprune.describe(pruned).kv_heads == config.kv_heads


def scores_favouring_layer(model, layer: int) -> autoprune.Scores:
    """Magnitude scores, with ``layer``'s heads a hundred times more important."""
    scores = autoprune.importance(model, [], "magnitude")
    heads = [h * (100.0 if i == layer else 1.0) for i, h in enumerate(scores.heads)]
    return autoprune.Scores(scores.method, heads, scores.neurons, scores.weights)


@pytest.mark.parametrize("unit", ["prunable", "macs"])
def test_global_allocation_follows_importance_on_target(bert, llama, unit: SizeUnit) -> None:
    for model in (bert, llama):
        space = space_of(model, unit)
        scores = scores_favouring_layer(model, 1)
        for target in (0.15, 0.25, 0.5, 0.75):
            allocation = space.global_allocation(scores, target)
            assert_within(space, allocation, target)
            uniform = space.at(target)
            assert allocation.heads[1] >= uniform.heads[1]
            assert allocation.heads[1] == space.arch.heads[1] or target < 0.25
        assert space.global_allocation(scores, 0.25).heads[1] > space.at(0.25).heads[1]


def test_global_allocation_keeps_the_best_scored_units(bert) -> None:
    space = space_of(bert)
    scores = autoprune.importance(bert, [], "magnitude")
    neurons = [torch.zeros_like(n) for n in scores.neurons]
    neurons[2] = torch.ones_like(neurons[2])  # only layer 2's neurons matter
    heads = [torch.zeros_like(h) for h in scores.heads]
    favoured = autoprune.Scores(scores.method, heads, neurons, scores.weights)
    allocation = space.global_allocation(favoured, 0.3)
    assert allocation.neurons[2] == 48
    assert_within(space, allocation, 0.3)


@pytest.mark.parametrize("unit", UNITS)
def test_layer_uniform_allocations_are_the_same_in_every_layer_and_on_target(
    bert, llama, unit: SizeUnit
) -> None:
    for model in (bert, llama):
        space = space_of(model, unit)
        for target in targets(space, 7)[1:-1]:
            choices = space.layer_uniform_choices(target)
            assert choices, f"no layer-uniform allocation at {target}"
            assert len({c.heads for c in choices}) == len(choices)  # one per head count
            for allocation in choices:
                assert_within(space, allocation, target)
                assert len(set(allocation.heads)) == 1
                levels = space.levels_of(allocation)[space.arch.num_layers :]
                assert max(levels) - min(levels) <= 1


def test_layer_uniform_refuses_what_cannot_meet_the_target(bert) -> None:
    space = space_of(bert)
    with pytest.raises(BudgetError, match="with 4 heads in every layer the size is"):
        space.layer_uniform(4, 0.2)  # every head kept is more than 0.2
    with pytest.raises(BudgetError, match="heads=5 is not on the budget grid"):
        space.layer_uniform(5, 0.5)


def test_bad_input_is_named(bert) -> None:
    sizes = SizeModel.of(bert, autoprune.measure(bert, SEQ_LEN))
    with pytest.raises(BudgetError, match="'nonzero' counts unstructured sparsity"):
        BudgetSpace(sizes, "nonzero")
    space = BudgetSpace(sizes, "prunable")
    for target in (-0.1, 1.2, space.smallest / 2):
        with pytest.raises(BudgetError, match=f"target {target} \\(prunable\\) cannot be met"):
            space.at(target)
    with pytest.raises(BudgetError, match="weights has 2 values, the space has 6 slots"):
        space.decode([0.5, 0.5], 0.5)
    with pytest.raises(BudgetError, match=r"weights: ffn_0=1.5, expected a number in \[0, 1\]"):
        space.decode([0.5, 0.5, 0.5, 1.5, 0.5, 0.5], 0.5)
    off_grid = Allocation(heads=(4, 4, 4), neurons=(48, 20, 48))
    with pytest.raises(BudgetError, match="layer 1: neurons=20 is not on the budget grid"):
        space.to_config(off_grid)
    with pytest.raises(BudgetError, match="is not within .* of target 0.25"):
        space.mutate(space.at(0.5), 0.25, random.Random(0))
    with pytest.raises(BudgetError, match="swaps must be >= 0"):
        space.mutate(space.at(0.5), 0.5, random.Random(0), swaps=-1)
