"""The targeted, multi-fidelity search end to end on the tiny study: candidates of exactly
the target size are screened retrain-free, the best few and the baselines' allocations are
retrained, every record carries its stage and fidelity, and a resumed search neither screens
a recorded candidate again nor retrains a finalist twice."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import screening_trials, tiny_study, with_search_outputs

from autoprune import cli
from autoprune.reports.compare import choose, finalist_of, split_of
from autoprune.reports.results import load_run
from autoprune.run.rundir import RunDir
from autoprune.run.session import open_run
from autoprune.search.budget import BudgetSpace
from autoprune.search.controllers.evo import EvolutionarySampler

TARGET = 0.5
SCREENING = {
    "fitness": "kl",
    "candidates": 6,
    "offspring": 3,
    "schedule": [[4, 2], [8, 1]],
    "finalists": 1,
}


@pytest.fixture(scope="module")
def targeted_run(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("targeted")
    study = tiny_study(
        directory,
        controller={"name": "evo", "seed": 0, "options": {"swaps": 1}},
        objectives={"size": "prunable", "targets": [TARGET]},
        screening=SCREENING,
    )
    out = directory / "run"
    assert cli.main(["-q", "search", str(study), "--out", str(out)]) == 0
    return out


def test_screening_records_candidates_of_the_target_size(targeted_run: Path) -> None:
    trials = screening_trials(targeted_run, TARGET)
    assert len(trials) == SCREENING["candidates"]
    states = {t.state.name for t in trials}
    assert states <= {"COMPLETE", "PRUNED"} and "PRUNED" in states
    tolerance = BudgetSpace(open_run(targeted_run).sizes, "prunable").tolerance
    for trial in trials:
        attrs = trial.user_attrs
        assert attrs["stage"] == "screen" and attrs["fitness_kind"] == "kl"
        assert attrs["fidelity"] in (8.0, 4.0)  # examples of the step where it was last scored
        assert abs(attrs["ratio_prunable"] - TARGET) <= tolerance + 1e-9
        assert attrs["fitness"] >= -1e-6  # a KL divergence, up to float rounding
    # the first generation is the starts: the uniform and the global-importance allocations
    assert trials[0].state.name == "COMPLETE" and trials[1].state.name == "COMPLETE"


def test_finalists_and_baseline_allocations_are_retrained(targeted_run: Path, capsys) -> None:
    run = load_run(targeted_run)
    search = run.complete("search")
    assert set(search["stage"]) == {"retrain"}
    assert 2 <= len(search) <= SCREENING["finalists"] + 2  # the best, uniform, global
    assert set(run.trials.loc[search.index, "target"]) == {TARGET}
    assert cli.main(["pareto", str(targeted_run), "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)["front"]
    assert front and all(point["stage"] == "retrain" for point in front)


def test_a_resumed_targeted_search_screens_only_what_is_missing(
    targeted_run: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(targeted_run, tmp_path / "run"))
    before = screening_trials(run, TARGET)
    retrained = len(load_run(run).complete("search"))
    more = ["-q", "search", str(run)]
    study = RunDir(run).study_file
    text = study.read_text().replace("candidates: 6", "candidates: 9")
    study.write_text(text)
    assert cli.main(more) == 0
    after = screening_trials(run, TARGET)
    assert len(after) == 9
    assert [t.params for t in after[: len(before)]] == [t.params for t in before]
    finalists = load_run(run).complete("search")
    configs = [
        json.dumps([h, f]) for h, f in zip(finalists["heads"], finalists["ffn"], strict=True)
    ]
    assert len(configs) == len(set(configs)) and len(finalists) >= retrained


def test_every_evolutionary_child_is_a_mutation_of_the_best_so_far() -> None:
    space = {f"x{i}": optuna.distributions.IntDistribution(0, 10) for i in range(4)}
    study = optuna.create_study(sampler=EvolutionarySampler(seed=0, swaps=1))
    study.enqueue_trial({name: 5 for name in space})
    rng = random.Random(0)
    for _ in range(30):
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        best = study.best_trial.params if complete else None
        trial = study.ask(space)
        if best is not None:
            moved = sum(abs(trial.params[n] - best[n]) for n in space)
            assert moved <= 1  # one step of one parameter from the best trial so far
        study.tell(trial, sum((v - 2) ** 2 for v in trial.params.values()) + rng.random())
    values = [t.value for t in study.trials]
    best_so_far = [min(values[: i + 1]) for i in range(len(values))]
    assert best_so_far[-1] < best_so_far[0]  # elitism makes progress on this bowl


def test_compare_shows_the_search_beside_every_baseline_at_each_target(
    targeted_run: Path, tmp_path: Path, capsys
) -> None:
    run = Path(shutil.copytree(targeted_run, tmp_path / "run"))
    assert cli.main(["-q", "baseline", str(run), "--kind", "layer-uniform"]) == 0
    assert "layer-uniform front" in capsys.readouterr().out  # at the study's targets
    assert cli.main(["compare", str(run), "--format", "json", "--resamples", "50"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["method"] for row in rows} == {"searched", "uniform", "layer-uniform", "global"}
    assert {row["target"] for row in rows} == {TARGET}
    searched = next(row for row in rows if row["method"] == "searched")
    assert searched["trial"] == int(choose(load_run(run), TARGET)["trial"])
    for row in rows:
        if row["method"] != "searched":
            low, high = (float(x) for x in row["95% interval"].strip("[]").split(","))
            diff = row["accuracy test"] - searched["accuracy test"]
            assert row["against"] == "searched" and row["setting"] == "structured"
            assert row["test diff"] == pytest.approx(diff, abs=1e-3)
            assert low - 1e-4 <= row["test diff"] <= high + 1e-4
    assert cli.main(["compare", str(run)]) == 0
    assert "at each target, test split" in capsys.readouterr().out


def test_the_choice_keeps_the_heuristic_unless_the_search_split_tells_them_apart(
    targeted_run: Path,
) -> None:
    run = load_run(targeted_run)
    assert run.spec.screening.choice == "significant"  # the default
    heuristic, uniform = finalist_of(run, TARGET, "global"), finalist_of(run, TARGET, "uniform")
    assert heuristic is not None and uniform is not None
    assert int(heuristic["trial"]) != int(uniform["trial"])
    for _, row in run.complete("search").iterrows():  # every other finalist far behind
        with_search_outputs(run, row, 1 - split_of(run, "search")[1].labels)
    labels = split_of(run, "search")[1].labels  # (examples,)
    half = labels.clone()
    half[: len(labels) // 2] = 1 - half[: len(labels) // 2]

    one_more = half.clone()
    one_more[0] = labels[0]  # uniform is ahead by a single example: within the noise
    with_search_outputs(run, heuristic, half)
    with_search_outputs(run, uniform, one_more)
    assert int(run.best_at(TARGET)["trial"]) == int(uniform["trial"])
    assert int(choose(run, TARGET)["trial"]) == int(heuristic["trial"])

    with_search_outputs(run, uniform, labels)  # right on every example: clearly ahead
    assert int(choose(run, TARGET)["trial"]) == int(uniform["trial"])

    with_search_outputs(run, uniform, one_more)
    run.search_outputs.clear()  # a run recorded without search outputs: the best metric
    assert int(choose(run, TARGET)["trial"]) == int(uniform["trial"])
    screening = run.spec.screening.model_copy(update={"choice": "best"})
    run.spec = run.spec.model_copy(update={"screening": screening})
    with_search_outputs(run, heuristic, half)
    with_search_outputs(run, uniform, one_more)
    assert int(choose(run, TARGET)["trial"]) == int(uniform["trial"])


def test_export_of_a_target_writes_the_searchs_choice(
    targeted_run: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "exported"
    assert cli.main(["export", str(targeted_run), "--target", str(TARGET), "--out", str(out)]) == 0
    chosen = int(choose(load_run(targeted_run), TARGET)["trial"])
    assert f"exported trial {chosen} " in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["trial"] == chosen
    missing = ["export", str(targeted_run), "--target", "0.3", "--out", str(tmp_path / "x")]
    assert cli.main(missing) == 2
    assert "--target 0.3: no complete search trial was built for it; targets with one: [0.5]" in (
        capsys.readouterr().err
    )


def test_a_fisher_screened_search_runs_and_a_sparsity_space_is_refused(
    tmp_path: Path, capsys
) -> None:
    sections = {
        "controller": {"name": "evo", "seed": 0, "options": {"swaps": 1}},
        "objectives": {"size": "prunable", "targets": [TARGET]},
        "screening": {**SCREENING, "fitness": "fisher", "candidates": 4},
        "retrain": {"steps": 1, "batch_size": 8},
    }
    study = tiny_study(tmp_path / "fisher", **sections)
    out = tmp_path / "fisher" / "run"
    assert cli.main(["-q", "search", str(study), "--out", str(out)]) == 0
    trials = screening_trials(out, TARGET)
    assert len(trials) == 4
    assert {t.user_attrs["fitness_kind"] for t in trials} == {"fisher"}
    assert all(t.user_attrs["fitness"] > 0.0 for t in trials)  # every candidate removes units

    space = str(Path(__file__).parents[1] / "search_spaces" / "heads_ffn_sparsity.yaml")
    refused = tiny_study(tmp_path / "refused", **sections, search_space=space)
    assert cli.main(["-q", "search", str(refused), "--out", str(tmp_path / "r")]) != 0
    assert "screening.fitness: fisher" in capsys.readouterr().err
