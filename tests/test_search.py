"""End to end on the real MiniLM and SST-2, with a small subset and a tiny budget:
search, resume, pareto, plot, export, reload; failures; the size band; the run's guard."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from conftest import REPO, new_run_with_prepared, search_study

import autoprune
from autoprune import cli
from autoprune.reports.results import load_run
from autoprune.run.ledger import count_spent
from autoprune.search.spec import StudyError
from autoprune.workflow import run_search


def test_search_records_every_trial_and_the_dense_model(run_dir: Path) -> None:
    run = load_run(run_dir)
    search = run.trials[run.trials["study"] == "search"]
    assert sorted(search["trial"]) == [0, 1]
    # outside_band trials do not spend the budget: two trials for a budget of two are complete
    assert set(search["status"]) == {"complete"}
    complete = run.complete("search")
    assert not complete.empty
    for column in ("metric_search", "metric_test", "metric_search_before", "size", "ratio_macs"):
        assert complete[column].between(0, 1).all(), column
    assert len(run.complete("uniform")) == 1
    assert 0.3 < run.dense.metric_test <= 1 and run.dense.size.params > 20e6
    assert (run_dir / "prepared" / "scores.safetensors").is_file()
    assert any((run_dir / "checkpoints").iterdir())


def test_resume_continues_to_the_budget_and_skips_interrupted(
    run_dir: Path, study_file: Path
) -> None:
    prepared_files = sorted((run_dir / "prepared").rglob("*"))
    mtimes = {p: p.stat().st_mtime for p in prepared_files}
    search_study(run_dir).ask()  # a trial left running, as by a driver killed mid-trial
    assert cli.main(["search", str(run_dir), "--trials", "3"]) == 0  # resume by directory
    study = search_study(run_dir)
    assert count_spent(study) == 3
    statuses = [t.user_attrs.get("status") for t in study.trials]
    assert statuses.count("interrupted") == 1
    configs = [str(t.params) for t in study.trials if t.user_attrs.get("status") == "complete"]
    assert len(configs) == len(set(configs))  # the resumed controller proposes anew
    assert {p: p.stat().st_mtime for p in prepared_files} == mtimes  # nothing recomputed


def test_pareto_in_every_format(run_dir: Path, capsys) -> None:
    assert cli.main(["pareto", str(run_dir), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["front"] and report["search"]["hypervolume_test"] >= 0
    assert "uniform" in report and report["dense"]["accuracy_test"] > 0
    assert cli.main(["pareto", str(run_dir), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("trial,size (prunable)")
    assert cli.main(["pareto", str(run_dir)]) == 0
    table = capsys.readouterr().out
    assert "chosen on the search split" in table and "hypervolume" in table


def test_plot_writes_png_and_html(run_dir: Path, tmp_path: Path) -> None:
    assert cli.main(["plot", str(run_dir), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (tmp_path / "pareto.html").read_text()[:100000].lower()


def test_export_matches_the_record_and_reloads(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "exported"
    assert cli.main(["export", str(run_dir), "--max-size", "1.0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "from its kept checkpoint" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["measured"] == metrics["recorded"]
    config = autoprune.PruneConfig.load(out / "prune_config.json")
    model, tokenizer = autoprune.load_pruned(out)
    assert list(autoprune.describe(model).heads) == list(config.heads)
    batch = tokenizer(["a gripping , funny film"], return_tensors="pt")
    assert model(**batch).logits.shape == (1, 2)
    assert "test split" in (out / "README.md").read_text()


def test_export_errors_are_clear(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert (
        cli.main(["export", str(run_dir), "--max-size", "0.0001", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "no front trial is that small" in capsys.readouterr().err
    assert cli.main(["export", str(run_dir), "--trial", "99", "--out", str(tmp_path / "x")]) == 2
    assert "no complete search trial 99" in capsys.readouterr().err


def test_a_failing_trial_is_recorded_and_the_search_goes_on(
    run_dir: Path, study_file: Path, tmp_path: Path, monkeypatch
) -> None:
    import autoprune.run.execute as execute_module

    real = execute_module.run_trial
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(execute_module, "run_trial", failing_once)
    out = new_run_with_prepared(run_dir, tmp_path)
    run_search(
        study_file,
        out,
        {"baseline.ratios": [], "objectives.min_size": None, "objectives.max_size": None},
    )
    trials = load_run(out).trials
    failed = trials[trials["status"] == "failed"]
    assert len(failed) == 1 and "injected failure" in failed.iloc[0]["failure"]
    assert (trials["status"] == "complete").sum() == 1


def test_size_band_that_nothing_fits(run_dir: Path, study_file: Path, tmp_path: Path) -> None:
    out = new_run_with_prepared(run_dir, tmp_path)
    overrides = {
        "search_space": str(REPO / "search_spaces" / "heads.yaml"),
        "objectives.min_size": 0.0,
        "objectives.max_size": 0.02,
    }
    with pytest.raises(StudyError, match=r"no configuration fits the size band \[0, 0.02\]"):
        run_search(study_file, out, overrides)
    assert not (out / "checkpoints").exists()


def test_resume_with_another_search_space_is_refused(run_dir: Path, study_file: Path) -> None:
    with pytest.raises(StudyError, match=r"search_space: .*heads.yaml differs from the space"):
        run_search(
            study_file, run_dir, {"search_space": str(REPO / "search_spaces" / "heads.yaml")}
        )


def test_run_prepared_for_another_study_is_refused(run_dir: Path, study_file: Path) -> None:
    before = (run_dir / "study.yaml").read_text()
    with pytest.raises(StudyError, match=r"prepared with a different study: finetune.steps"):
        run_search(study_file, run_dir, {"finetune.steps": 9})
    assert (run_dir / "study.yaml").read_text() == before


def test_nan_loss_raises_training_diverged() -> None:
    from conftest import tiny_batch, tiny_model

    from autoprune.tasks import Classification
    from autoprune.tasks.data import Encoded
    from autoprune.tasks.train import Recipe, TrainingDiverged, train

    model = tiny_model("bert")
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    batch = tiny_batch()
    data = Encoded(batch["input_ids"], batch["attention_mask"], batch["labels"])
    with pytest.raises(TrainingDiverged, match="the loss is nan at step 1"):
        train(model, data, Recipe(steps=2, batch_size=4), Classification(metric="f1", num_labels=2))


def test_interrupted_count_is_not_spent(tmp_path: Path) -> None:
    from autoprune.run.ledger import Ledger
    from autoprune.run.rundir import RunDir
    from autoprune.search.spec import EarlyStoppingSpec
    from autoprune.tasks import Classification

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.ask()
    ledger = Ledger(
        study,
        task=Classification(metric="accuracy", num_labels=2),
        size_unit="prunable",
        run=RunDir(tmp_path),
        early_stopping=EarlyStoppingSpec(),
    )
    assert ledger.recover_interrupted() == 1
    assert count_spent(study) == 0 and study.trials[0].user_attrs["status"] == "interrupted"
