"""The language-modelling task on tiny random Llamas: perplexity against a direct computation,
per-window outputs, top-k distillation against the full KL divergence, cached and online
teachers, windows that never cross splits, the study keys of each task, and a tiny study
searched end to end (free size and at a target), then read, compared and exported."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import byte_level_tokenizer, tiny_lm_study, with_search_outputs
from test_groups import VOCAB, tiny_llama

import autoprune
from autoprune import PruneConfig, cli
from autoprune.reports.compare import choose, finalist_of, paired_bootstrap, split_of
from autoprune.reports.results import load_run
from autoprune.search.spec import StudyError, load_study
from autoprune.tasks import LanguageModeling
from autoprune.tasks.data import DataError, DataSpec, Encoded, load_windows
from autoprune.tasks.language_modeling import top_k_kl
from autoprune.tasks.train import Recipe, train


def windows(count: int = 6, length: int = 12, seed: int = 0) -> Encoded:
    """Random windows; the last one has only 5 real tokens (right padding)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (count, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, 5:] = 0
    return Encoded(input_ids=ids, attention_mask=mask)


def task(top_k: int = 8, teacher: str = "cached") -> LanguageModeling:
    return LanguageModeling(reference=1000.0, teacher=teacher, top_k=top_k)  # type: ignore[arg-type]


def full_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(teacher || student)`` over the whole vocabulary, per position."""
    return F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        log_target=True,
        reduction="none",
    ).sum(dim=-1)


def test_perplexity_equals_a_direct_computation() -> None:
    model, data = tiny_llama(), windows()
    with torch.no_grad():
        logits = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    log_probs = F.log_softmax(logits[:, :-1], dim=-1)  # (windows, positions, vocab)
    nll = -log_probs.gather(-1, data.input_ids[:, 1:, None])[..., 0]  # (windows, positions)
    real = data.attention_mask[:, 1:].bool()
    direct = math.exp(float(nll[real].sum() / real.sum()))  # token-weighted
    assert task().evaluate(model, data) == pytest.approx(direct, rel=1e-5)
    full = data.subset(slice(0, 5))  # no padding: the model's own loss agrees
    with torch.no_grad():
        loss = model(input_ids=full.input_ids, labels=full.input_ids).loss
    assert task().evaluate(model, full) == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_example_outputs_give_back_the_metric_on_any_resample() -> None:
    model, data, lm = tiny_llama(), windows(), task()
    outputs = lm.example_outputs(model, data)
    assert outputs.shape == (len(data), 2) and outputs.dtype == torch.float64
    assert outputs[:, 1].tolist() == [11.0] * 5 + [4.0]  # predicted tokens per window
    assert lm.metric_of(outputs, data) == pytest.approx(lm.evaluate(model, data))
    rows = torch.tensor([4, 0, 0, 5])
    resampled = data.subset(rows)
    assert lm.metric_of(outputs[rows], resampled) == pytest.approx(lm.evaluate(model, resampled))
    same = paired_bootstrap(lm, data, [outputs], [outputs], resamples=20)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)
    assert lm.score(lm.evaluate(model, data)) < 0  # lower perplexity scores higher


def test_top_k_over_the_vocabulary_is_the_full_kl_and_fewer_tokens_a_lower_bound() -> None:
    student, teacher, data = tiny_llama(seed=1), tiny_llama(seed=2), windows()
    batch = next(data.batches(len(data)))
    with torch.no_grad():
        s = student(**batch).logits[:, :-1]  # (windows, positions, vocab)
        t = teacher(**batch).logits[:, :-1]
    real = batch["attention_mask"][:, 1:].bool()
    exact, few = task(top_k=VOCAB), task(top_k=4)
    targets = exact.teacher_targets(teacher, batch)
    assert targets.shape == (len(data), 11, 2 * VOCAB + 1)
    for temperature in (1.0, 2.0):
        bucketed = top_k_kl(F.log_softmax(s, dim=-1), targets, temperature)
        torch.testing.assert_close(bucketed, full_kl(s, t, temperature))
    with torch.no_grad():
        divergence = exact.divergence(student, batch, targets)
        bound = few.divergence(student, batch, few.teacher_targets(teacher, batch))
        loss = exact.distillation_loss(student, batch, targets, 2.0, 1.0)
        itself = exact.divergence(teacher, batch, targets)
    torch.testing.assert_close(divergence, full_kl(s, t, 1.0)[real])
    assert divergence.shape == (int(real.sum()),)
    assert bool((bound <= divergence + 1e-6).all()) and float(bound.mean()) > 0
    per_window = (full_kl(s, t, 2.0) * real).sum(dim=1) / real.sum(dim=1)
    torch.testing.assert_close(loss, 4.0 * per_window.mean())  # times temperature^2
    assert float(itself.abs().max()) < 1e-5


def test_cached_and_online_teachers_train_alike() -> None:
    dense, data = tiny_llama(), windows(count=8)
    arch = autoprune.describe(dense)
    scores = autoprune.importance(dense, [], "magnitude")
    config = PruneConfig.uniform(arch, heads=0.5, ffn=0.5)
    recipe = Recipe(steps=3, batch_size=4, lr=1e-3)
    students = [autoprune.prune(dense, config, scores) for _ in range(2)]
    cached = data.map_rows(lambda batch: task().teacher_targets(dense, batch))
    train(students[0], data, recipe, task(), cached)
    train(students[1], data, recipe, task(teacher="online"), dense)
    for a, b in zip(students[0].parameters(), students[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_windows_never_cross_splits(tmp_path: Path) -> None:
    tokenizer = byte_level_tokenizer()
    train_text, test_text = "abcdefgh" * 40, "01234567" * 10  # 320 and 80 bytes
    (tmp_path / "train.txt").write_text(train_text)
    (tmp_path / "test.txt").write_text(test_text + "xyz")  # a tail too short for a window
    spec = DataSpec(train=tmp_path / "train.txt", test=tmp_path / "test.txt", search_samples=10)
    data = load_windows(spec, tokenizer, max_length=16)
    assert (len(data.search), len(data.pool), len(data.test)) == (10, 10, 5)
    stream = tokenizer(train_text)["input_ids"]
    train_windows = torch.tensor(stream).view(20, 16)
    assert torch.equal(data.pool.input_ids, train_windows[:10])  # the pool comes first
    assert torch.equal(data.search.input_ids, train_windows[10:])  # the search split last
    assert tokenizer.decode(data.test.input_ids.reshape(-1)) == test_text
    assert data.search.labels is None and bool(data.test.attention_mask.all())
    assert "labels" not in next(data.pool.batches(4))
    capped = DataSpec(**{**spec.model_dump(), "train_samples": 10, "test_samples": 10})
    assert len(load_windows(capped, tokenizer, 16).pool) == 10
    with pytest.raises(DataError, match=r"20 windows of 16 tokens .* \(data.search_samples\)"):
        load_windows(DataSpec(**{**spec.model_dump(), "search_samples": 20}), tokenizer, 16)
    with pytest.raises(DataError, match="test.txt: its 83 tokens do not fill one window of 100"):
        load_windows(spec, tokenizer, 100)


def test_each_task_refuses_the_other_tasks_keys(tmp_path: Path) -> None:
    study = tiny_lm_study(tmp_path)
    with pytest.raises(StudyError, match="objectives.reference: a language model's"):
        load_study(study, {"objectives.reference": None})
    with pytest.raises(StudyError, match="data.metric, model.num_labels: settings of a class"):
        load_study(study, {"data.metric": "matthews", "model.num_labels": 2})
    with pytest.raises(StudyError, match="data.search_min_words: settings of a class"):
        load_study(study, {"data.search_min_words": 10})
    refused = {"task": "classification", "data.text": ["text"], "data.search_samples": 10}
    with pytest.raises(StudyError, match="objectives.reference, retrain.top_k: settings of a lan"):
        load_study(study, refused)
    no_text = {"task": "classification", "objectives.reference": None, "retrain.top_k": None}
    with pytest.raises(StudyError, match="data.text: name the column"):
        load_study(study, no_text)


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory) -> tuple[Path, Path]:
    """A free-size search (cached teacher) and a targeted one (online teacher) of the tiny
    language-modelling study."""
    directory = tmp_path_factory.mktemp("lm")
    free = tiny_lm_study(directory / "free")
    targeted = tiny_lm_study(
        directory / "targeted",
        controller={"name": "evo", "seed": 0, "options": {"swaps": 1}},
        objectives={"size": "prunable", "reference": 1000.0, "targets": [0.5]},
        screening={
            "fitness": "kl",
            "candidates": 4,
            "offspring": 2,
            "schedule": [[4, 2], [8, 1]],
            "finalists": 1,
        },
        retrain={"steps": 2, "batch_size": 4, "top_k": 8, "teacher": "online"},
    )
    runs = directory / "free" / "run", directory / "targeted" / "run"
    for study, out in zip((free, targeted), runs, strict=True):
        assert cli.main(["-q", "search", str(study), "--out", str(out)]) == 0
    return runs


def test_a_tiny_language_model_is_searched_and_its_front_read(lm_runs, capsys) -> None:
    for path in lm_runs:
        run = load_run(path)
        assert run.metric == "perplexity" and run.direction == "minimize"
        assert run.reference == 1000.0 and 100 < run.dense.metric_test < 1000
        complete = run.complete("search")
        assert len(complete) == 2 and (complete["metric_test"] > 1).all()
        front = run.front("search")
        points = list(zip(complete["size"], complete["metric_search"], strict=True))
        for size, perplexity in points:  # on the front exactly when nothing is as small and lower
            dominated = any(
                s <= size and p <= perplexity and (s, p) != (size, perplexity) for s, p in points
            )
            assert dominated != (perplexity in front["metric_search"].tolist())
        capsys.readouterr()
        assert cli.main(["pareto", str(path), "--format", "json"]) == 0
        reported = json.loads(capsys.readouterr().out)["front"]
        assert [point["trial"] for point in reported] == front["trial"].tolist()
    assert cli.main(["compare", str(lm_runs[1])]) == 0
    assert "perplexity at each target" in capsys.readouterr().out


def test_an_exported_language_model_measures_what_its_run_recorded(lm_runs, tmp_path) -> None:
    run = load_run(lm_runs[1])
    best = run.complete("search").sort_values("metric_search").iloc[0]
    out = tmp_path / "export"
    trial = ["--trial", str(best["trial"])]
    assert cli.main(["-q", "export", str(lm_runs[1]), *trial, "--out", str(out)]) == 0
    model, tokenizer = autoprune.load_pruned(out)
    assert tokenizer is not None and model.config.model_type == "llama"
    data = load_windows(run.spec.data, tokenizer, run.spec.max_length)
    assert task().evaluate(model, data.test) == pytest.approx(best["metric_test"], rel=1e-5)


def test_the_choice_of_a_perplexity_reads_lower_as_better(lm_runs) -> None:
    run = load_run(lm_runs[1])
    target = run.spec.objectives.targets[0]
    heuristic, uniform = finalist_of(run, target, "global"), finalist_of(run, target, "uniform")
    assert heuristic is not None and uniform is not None
    assert int(heuristic["trial"]) != int(uniform["trial"])
    tokens = split_of(run, "search")[1].attention_mask[:, 1:].sum(dim=1).double()  # (windows,)

    def at_perplexity(perplexity: torch.Tensor) -> torch.Tensor:  # (windows, 2)
        return torch.stack([tokens * perplexity.log(), tokens], dim=1)

    for _, row in run.complete("search").iterrows():  # every other finalist far behind
        with_search_outputs(run, row, at_perplexity(torch.full_like(tokens, 900.0)))
    with_search_outputs(run, heuristic, at_perplexity(torch.full_like(tokens, 100.0)))
    one_window = torch.full_like(tokens, 100.0)
    one_window[0] = 60.0  # lower on one window only: within the noise
    with_search_outputs(run, uniform, at_perplexity(one_window))
    assert int(run.best_at(target)["trial"]) == int(uniform["trial"])
    assert int(choose(run, target)["trial"]) == int(heuristic["trial"])
    with_search_outputs(run, uniform, at_perplexity(torch.full_like(tokens, 60.0)))
    assert int(choose(run, target)["trial"]) == int(uniform["trial"])  # lower everywhere
