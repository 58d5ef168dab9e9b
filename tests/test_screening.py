"""Screening: retrain-free fitness against the dense model, and multi-step selection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_study
from torch import nn

import autoprune
from autoprune import PruneConfig
from autoprune.engine.gates import gated
from autoprune.run.prepare import Prepared, prepare
from autoprune.run.screen import TIE_BREAK, Screener, ScreenOutcome, screen_candidate, select
from autoprune.search.spec import load_study
from autoprune.tasks.data import Encoded


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """The tiny study's prepared work: a 2-layer BERT (4 heads, 48 neurons), 60 pool examples."""
    directory = tmp_path_factory.mktemp("screen")
    spec = load_study(tiny_study(directory))
    prepared = prepare(spec, directory / "prepared", torch.device("cpu"))
    # At BERT's initial scale (0.02) a tiny model's outputs barely depend on its input;
    # re-drawn at 1/sqrt(fan-in), they do, and pruning moves them measurably.
    torch.manual_seed(0)
    with torch.no_grad():
        for module in prepared.model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
    return prepared


def half(prepared: Prepared) -> PruneConfig:
    return PruneConfig.uniform(autoprune.describe(prepared.model), heads=0.5, ffn=0.5)


# Six distinct configurations of the tiny model's two layers: half its heads and neurons,
# spread differently over the layers.
CANDIDATES = [
    PruneConfig([h, 4 - h], [f, 48 - f])
    for h, f in [(4, 40), (1, 30), (2, 24), (3, 4), (0, 12), (2, 46)]
]


def outputs(model: torch.nn.Module, data: Encoded) -> torch.Tensor:
    """Logits on ``data`` in one untrimmed batch."""
    inputs = {"input_ids": data.input_ids, "attention_mask": data.attention_mask}
    if data.token_type_ids is not None:
        inputs["token_type_ids"] = data.token_type_ids
    with torch.no_grad():
        return model(**inputs).logits


def test_kl_equals_a_direct_computation(prepared: Prepared) -> None:
    outcome = screen_candidate(Screener(prepared, batch_size=5), half(prepared), slice(3, 19))
    pruned = autoprune.prune(prepared.model, half(prepared), prepared.scores)
    part = prepared.data.pool.subset(slice(3, 19))
    student, teacher = outputs(pruned, part), outputs(prepared.model, part)
    direct = F.kl_div(
        F.log_softmax(student, dim=-1),
        F.log_softmax(teacher, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    assert outcome.fitness > 0
    assert outcome.fitness == pytest.approx(float(direct), rel=1e-5)
    assert outcome.fitness_kind == "kl" and outcome.stage == "screen"
    assert outcome.examples == (3, 19) and outcome.fidelity == 16 and not outcome.recovered
    assert 0 < outcome.ratios["prunable"] < 1


def test_hidden_loss_and_metric_equal_direct_computations(prepared: Prepared) -> None:
    config, part = half(prepared), prepared.data.pool.subset(slice(0, 12))
    pruned = autoprune.prune(prepared.model, config, prepared.scores)

    def hidden(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            out = model(
                input_ids=part.input_ids,
                attention_mask=part.attention_mask,
                output_hidden_states=True,
            )
        return out.hidden_states[-1]  # (examples, seq, hidden)

    mask = part.attention_mask[..., None]
    error = ((hidden(pruned) - hidden(prepared.model)) * mask).pow(2).sum(dim=(1, 2))
    reference = (hidden(prepared.model) * mask).pow(2).sum(dim=(1, 2))
    screened = Screener(prepared, fitness="hidden").score(pruned, slice(0, 12))
    assert screened == pytest.approx(float((error / reference).mean()), rel=1e-5)

    loss = F.cross_entropy(outputs(pruned, part), part.labels)
    screened = Screener(prepared, fitness="loss", batch_size=5).score(pruned, slice(0, 12))
    assert screened == pytest.approx(float(loss), rel=1e-5)

    search = prepared.data.search.subset(slice(0, 12))
    accuracy = float((outputs(pruned, search).argmax(dim=-1) == search.labels).float().mean())
    search_loss = float(F.cross_entropy(outputs(pruned, search), search.labels))
    screened = Screener(prepared, fitness="metric").score(pruned, slice(0, 12))
    assert screened == pytest.approx(-accuracy + TIE_BREAK * search_loss, abs=1e-9)
    assert abs(screened + accuracy) < 1 / 12  # the loss only breaks ties of the accuracy


def test_fisher_equals_a_direct_computation(prepared: Prepared) -> None:
    """Half the mean over examples of the squared sum of the removed units' gate gradients,
    each example's gradients taken on its own through unbatched gates."""
    model = prepared.model.eval()
    arch = autoprune.describe(model)
    config = PruneConfig([3, 4], [48, 28])  # one head of layer 0, 20 neurons of layer 1
    screener = Screener(prepared, fitness="fisher", batch_size=3)
    removed = screener.removed(config)
    scores = prepared.scores
    expected_removed = torch.zeros(sum(arch.heads) + sum(arch.ffn))
    expected_removed[int(scores.heads[0].argmin())] = 1.0
    layer_1_neurons = sum(arch.heads) + arch.ffn[0]
    expected_removed[layer_1_neurons + scores.neurons[1].topk(20, largest=False).indices] = 1.0
    assert torch.equal(removed, expected_removed)

    part = prepared.data.pool.subset(slice(2, 10))
    squares = []
    for n in range(len(part)):
        one = part.subset(slice(n, n + 1))
        heads = [torch.ones(h, requires_grad=True) for h in arch.heads]
        neurons = [torch.ones(f, requires_grad=True) for f in arch.ffn]
        inputs = {"input_ids": one.input_ids, "attention_mask": one.attention_mask}
        if one.token_type_ids is not None:
            inputs["token_type_ids"] = one.token_type_ids
        with gated(model, heads, neurons):
            loss = F.cross_entropy(model(**inputs).logits, one.labels)
        gradient = torch.cat(torch.autograd.grad(loss, [*heads, *neurons]))
        squares.append(float(gradient @ removed) ** 2)
    expected = 0.5 * sum(squares) / len(squares)
    pruned = autoprune.prune(model, config, scores)
    assert screener.score(pruned, slice(2, 10), config) == pytest.approx(expected, rel=1e-4)
    assert expected > 0.0
    dense = PruneConfig.dense(arch)
    assert screen_candidate(screener, dense, slice(2, 10)).fitness == 0.0


def test_fisher_refuses_what_it_cannot_score(prepared: Prepared) -> None:
    screener = Screener(prepared, fitness="fisher")
    sparse = PruneConfig([4, 4], [48, 48], [0.5, 0.0])
    with pytest.raises(ValueError, match="fisher.*sparsity or drops layers"):
        screen_candidate(screener, sparse, slice(0, 4))
    with pytest.raises(ValueError, match="pass config="):
        screener.score(prepared.model, slice(0, 4))
    with pytest.raises(ValueError, match="recovery_examples must be 0 with fitness 'fisher'"):
        Screener(prepared, fitness="fisher", recovery_examples=8)


@pytest.mark.parametrize("fitness", ["kl", "hidden"])
def test_the_dense_model_is_at_zero(prepared: Prepared, fitness) -> None:
    dense = PruneConfig.dense(autoprune.describe(prepared.model))
    assert screen_candidate(Screener(prepared, fitness=fitness), dense).fitness == 0.0
    recovered = Screener(prepared, fitness=fitness, recovery_examples=16)
    outcome = screen_candidate(recovered, dense)
    assert outcome.recovered and outcome.fitness == pytest.approx(0.0, abs=1e-6)


def test_recovery_examples_are_never_scored(prepared: Prepared) -> None:
    screener = Screener(prepared, recovery_examples=16)
    assert screener.examples == len(prepared.data.pool) - 16
    assert torch.equal(screener.data.input_ids, prepared.data.pool.input_ids[16:])


def test_dense_outputs_are_computed_once_per_range(
    prepared: Prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    screener = Screener(prepared, batch_size=4)
    calls = []
    original = prepared.task.teacher_targets

    def counted(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(model is screener.dense)
        return original(model, batch)

    monkeypatch.setattr(prepared.task, "teacher_targets", counted)
    for config in CANDIDATES[:3]:
        screen_candidate(screener, config, slice(0, 12))
    assert calls == [True] * 3  # three batches of four, for the first candidate only


def test_multi_step_selection_keeps_the_best_on_fresh_examples(prepared: Prepared) -> None:
    screener, seen = Screener(prepared, batch_size=8), []
    schedule = [(8, 4), (12, 2), (16, 1)]
    survivors = select(screener, CANDIDATES, schedule, on_outcome=seen.append)

    stages = [seen[:6], seen[6:10], seen[10:]]
    assert [len(s) for s in stages] == [6, 4, 2] and len(survivors) == 1
    assert [s[0].examples for s in stages] == [(0, 8), (8, 20), (20, 36)]
    for stage in stages:
        assert len({o.examples for o in stage}) == 1
    for before, after, (_, keep) in zip(stages, stages[1:], schedule, strict=False):
        best = sorted(before, key=lambda o: o.fitness)[:keep]
        assert [o.config for o in after] == [o.config for o in best]
    assert survivors[0] == min(stages[-1], key=lambda o: o.fitness)


class InBatches:
    """Screens a list in batches of ``size``, each on a screener of its own, as a backend's
    workers do."""

    def __init__(self, prepared: Prepared, size: int) -> None:
        self.prepared, self.size, self.calls = prepared, size, 0
        self.examples = Screener(prepared).examples

    def screen(self, configs, examples: slice) -> list[ScreenOutcome]:
        outcomes = []
        for start in range(0, len(configs), self.size):
            self.calls += 1
            outcomes += Screener(self.prepared).screen(configs[start : start + self.size], examples)
        return outcomes


def test_selection_does_not_depend_on_how_candidates_are_batched(prepared: Prepared) -> None:
    schedule = [(8, 3), (12, 1)]
    whole = select(Screener(prepared), CANDIDATES, schedule)
    batched = InBatches(prepared, size=4)
    kept = select(batched, CANDIDATES, schedule)
    assert [(o.config, o.fitness) for o in kept] == [(o.config, o.fitness) for o in whole]
    assert batched.calls == 2 + 1  # six candidates in two batches, then the three kept


def test_bad_schedules_are_named(prepared: Prepared) -> None:
    screener, configs = Screener(prepared), CANDIDATES
    for schedule in ([], [(8, 0)], [(0, 2)], [(40, 2), (40, 1)]):
        with pytest.raises(ValueError, match="schedule"):
            select(screener, configs, schedule)
    with pytest.raises(ValueError, match="candidates"):
        select(screener, [], [(8, 1)])
    with pytest.raises(ValueError, match="fitness"):
        Screener(prepared, fitness="accuracy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="recovery_examples"):
        Screener(prepared, recovery_examples=len(prepared.data.pool))


def test_an_outcome_round_trips(prepared: Prepared) -> None:
    outcome = screen_candidate(Screener(prepared), half(prepared), slice(0, 8))
    assert ScreenOutcome.from_dict(outcome.to_dict()) == outcome
    attrs = outcome.to_attrs()
    assert attrs["stage"] == "screen" and attrs["ratio_prunable"] == outcome.ratios["prunable"]
