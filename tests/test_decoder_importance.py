"""Importance for decoders on tiny random Llamas: the gradient criteria under the language
model's loss, activation scores (Minitron for heads and neurons, Wanda for weights, compared
per output row), and Wanda's layer-by-layer sparsity."""

from __future__ import annotations

import pytest
import torch
from test_groups import tiny_llama
from test_language_modeling import windows

import autoprune
from autoprune import PruneConfig
from autoprune.engine.sparsity import Masked, effective_weight
from autoprune.engine.wanda import sparsify
from autoprune.tasks import LanguageModeling

LM = LanguageModeling(reference=1000.0)


def batches(count: int = 6) -> list[dict[str, torch.Tensor]]:
    return list(windows(count=count).batches(3))


def loss(model, batch):
    return LM.loss(model, batch, reduction="sum")


@pytest.mark.parametrize("method", ["taylor", "fisher", "activation"])
def test_criteria_score_a_decoder_on_its_language_model_loss(method: str) -> None:
    model = tiny_llama()
    scores = autoprune.importance(model, batches(), method, loss=loss)
    scores.check(autoprune.describe(model))
    for unit in (*scores.heads, *scores.neurons):
        assert bool(torch.isfinite(unit).all()) and float(unit.sum()) > 0
    assert scores.scope == ("row" if method == "activation" else "layer")


def test_activation_scores_read_what_the_units_output() -> None:
    model = tiny_llama()
    layer = model.model.layers[1]
    with torch.no_grad():
        layer.self_attn.v_proj.weight[16:32] = 0.0  # key/value group 1: heads 2 and 3 output 0
        layer.mlp.up_proj.weight[5] = 0.0  # neuron 5 outputs 0
        model.model.layers[0].mlp.down_proj.weight[:, 7] *= 0.0  # a weight column, not an input
    scores = autoprune.importance(model, batches(), "activation", loss=loss)
    assert scores.heads[1][2:].abs().max() == 0 and bool((scores.heads[1][:2] > 0).all())
    assert scores.neurons[1][5] == 0 and bool((scores.neurons[1][:5] > 0).all())
    assert bool((scores.weights[1]["self_attn.o_proj"][:, 32:] == 0).all())  # heads 2-3 columns
    assert bool((scores.weights[0]["mlp.down_proj"][:, 7] == 0).all())
    assert bool((scores.weights[0]["mlp.down_proj"][:, 6] > 0).all())


def test_activation_scores_make_every_row_equally_sparse() -> None:
    model = tiny_llama()
    scores = autoprune.importance(model, batches(), "activation", loss=loss)
    arch = autoprune.describe(model)
    pruned = autoprune.prune(model, PruneConfig.uniform(arch, heads=0.5, sparsity=0.5), scores)
    for layer in pruned.model.layers:
        for name in ("self_attn.q_proj", "mlp.down_proj"):
            weight = effective_weight(layer.get_submodule(name))  # (out, in)
            zeros = (weight == 0).sum(dim=1)  # (out,)
            assert zeros.tolist() == [round(0.5 * weight.shape[1])] * weight.shape[0]


def test_wanda_goes_layer_by_layer_through_the_sparse_model() -> None:
    model, calibration = tiny_llama(), batches()
    dense = autoprune.importance(model, calibration, "activation", loss=loss)
    arch = autoprune.describe(model)

    def masks(sparse) -> list[dict[str, torch.Tensor]]:
        return [
            {n: m.mask.clone() for n, m in layer.named_modules() if isinstance(m, Masked)}
            for layer in sparse.model.layers
        ]

    first_only = masks(sparsify(model, calibration, [0.5, 0.0, 0.0]))
    last_only = masks(sparsify(model, calibration, [0.0, 0.0, 0.5]))
    every = masks(sparsify(model, calibration, [0.5, 0.5, 0.5]))
    one_pass = masks(autoprune.prune(model, PruneConfig.uniform(arch, sparsity=0.5), dense))
    assert first_only[1] == {} and last_only[0] == {}  # layers at 0 stay unmasked
    assert not any(isinstance(m, Masked) for m in model.modules())  # the model is untouched
    for name, mask in every[0].items():  # the first layer sees the dense inputs either way
        assert torch.equal(mask, first_only[0][name]) and torch.equal(mask, one_pass[0][name])
        assert (mask == 0).sum(dim=1).tolist() == [round(0.5 * mask.shape[1])] * mask.shape[0]
    for name, mask in last_only[2].items():  # dense layers before it: the dense scores
        assert torch.equal(mask, one_pass[2][name])
    assert any(not torch.equal(every[2][n], one_pass[2][n]) for n in every[2])  # sparse inputs
