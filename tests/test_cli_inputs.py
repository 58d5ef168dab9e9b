"""Bad input and unusual events on the command line: each gets one clear message, naming
the file, key or argument, found before work is spent, and nothing of the user's is lost."""

from __future__ import annotations

import errno
import importlib
import shutil
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, tiny_model_dir, tiny_study

import autoprune
from autoprune import cli
from autoprune.errors import AutopruneError
from autoprune.reports.results import load_run
from autoprune.run.prepare import prepare
from autoprune.search.space import load_space
from autoprune.search.spec import StudyError, load_study
from autoprune.tasks.data import DataError, DataSpec, load_task


def copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def error_of(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's error message (what it printed from ``autoprune: error:`` on)."""
    err = capsys.readouterr().err
    assert "autoprune: error: " in err and "Traceback" not in err, err
    return err[err.index("autoprune: error: ") :]


# -- 1. export never overwrites the user's files unasked ------------------------------------


def test_export_refuses_a_non_empty_directory_unless_forced(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    assert cli.main(["export", str(tiny_run), "--max-size", "1", "--out", str(out)]) == 2
    message = error_of(capsys)
    assert "is not empty (README.md)" in message and "--force" in message
    assert (out / "README.md").read_text() == "my notes"
    assert cli.main(["export", str(tiny_run), "--max-size", "1", "--out", str(out), "--force"]) == 0
    assert (out / "prune_config.json").is_file()


def test_export_to_a_file_is_refused_before_any_work(
    tiny_run: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import autoprune.reports.export as export_module

    def no_work(*args: object) -> None:
        raise AssertionError("the run was read before the destination was checked")

    monkeypatch.setattr(export_module, "load_run", no_work)
    target = tmp_path / "model.bin"
    target.write_text("keep")
    assert cli.main(["export", str(tiny_run), "--trial", "0", "--out", str(target)]) == 2
    assert "exists and is not a directory" in error_of(capsys)
    assert target.read_text() == "keep"


# -- 2. a damaged or unreachable storage ------------------------------------------------------


def test_a_corrupted_storage_is_named_and_left_untouched(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    run = copy_run(tiny_run, tmp_path)
    database = run / "optuna.db"
    with open(database, "r+b") as handle:
        handle.truncate(1000)
    before = database.read_bytes()
    for command in (["pareto", str(run)], ["search", str(run)], ["baseline", str(run)]):
        assert cli.main(command) == 2, command
        message = error_of(capsys)
        assert str(database) in message and "cannot be opened or read" in message
        assert len(message.splitlines()) == 1
    assert database.read_bytes() == before


def test_a_bad_storage_url_is_found_before_preparing(tmp_path: Path, capsys) -> None:
    study = tiny_study(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["search", str(study), "--out", str(out), "--storage", "nosuch://x"]) == 2
    assert "the Optuna storage nosuch://x cannot be opened" in error_of(capsys)
    assert not (out / "prepared").exists()


# -- 3. the study's inputs are checked before any work ---------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        ({"search_space": "absent.yaml"}, "search space file not found: "),
        ({"search_space": "bad_space.yaml"}, "unknown key 'heads.stride'"),
        ({"data.train": "absent.csv"}, "data.train: data file not found: "),
        ({"model.source": "./no_model_here"}, "model directory not found: "),
    ],
)
def test_bad_inputs_are_found_before_preparing(tmp_path: Path, change: dict, message: str) -> None:
    from autoprune.workflow import run_search

    study = tiny_study(tmp_path)
    (tmp_path / "bad_space.yaml").write_text("heads: {min: 0.2, stride: 1}\n")
    key, value = next(iter(change.items()))
    with pytest.raises(AutopruneError, match=message):
        run_search(study, tmp_path / "run", {key: str(tmp_path / value)})
    assert not (tmp_path / "run" / "prepared").exists()


# -- 4. a failed first start does not bind the run to its study -------------------------------


def test_a_failed_first_start_leaves_the_run_usable(tmp_path: Path) -> None:
    from autoprune.workflow import run_search

    study = tiny_study(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"column\(s\) \['text'\] not found"):
        run_search(study, out, {"data.text": ["text"], "budget.trials": 1})
    assert not (out / "prepared" / "fingerprint.json").exists()
    run_search(study, out, {"budget.trials": 1})  # the fixed study, the same --out
    assert (out / "prepared" / "fingerprint.json").is_file()
    assert not (out / "prepared" / "fingerprint.pending.json").exists()
    assert not list(out.rglob("*.partial"))


def test_an_unfinished_shared_preparation_of_another_study_is_discarded(tmp_path: Path) -> None:
    """A run whose prepared folder links to a shared one (as the benchmarks share them)."""
    from autoprune.workflow import run_search

    study = tiny_study(tmp_path)
    shared, out = tmp_path / "shared", tmp_path / "run"
    shared.mkdir()
    (shared / "fingerprint.pending.json").write_text('{"data.train": "elsewhere.csv"}')
    (shared / "stale.safetensors").write_text("from another study")
    out.mkdir()
    (out / "prepared").symlink_to(shared, target_is_directory=True)
    run_search(study, out, {"budget.trials": 1})
    assert (out / "prepared").is_symlink() and (shared / "fingerprint.json").is_file()
    assert not (shared / "stale.safetensors").exists()


# -- 5. the dense model's new head is seeded --------------------------------------------------


def test_the_same_seed_gives_the_same_classifier(tmp_path: Path) -> None:
    source = tiny_model_dir(tmp_path / "model")
    state = torch.random.get_rng_state()
    first, _ = autoprune.load_model(source, num_labels=2, seed=3)
    again, _ = autoprune.load_model(source, num_labels=2, seed=3)
    other, _ = autoprune.load_model(source, num_labels=2, seed=4)
    assert torch.equal(first.classifier.weight, again.classifier.weight)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched


# -- 6. a checkpoint that cannot be written ---------------------------------------------------


def test_a_checkpoint_that_cannot_be_written_is_recorded_and_export_says_so(
    tmp_path: Path, capsys, caplog, monkeypatch
) -> None:
    import autoprune.run.execute as execute_module
    from autoprune.workflow import run_search

    def disk_full(model: object, directory: Path, tokenizer: object = None) -> None:
        Path(directory).mkdir(parents=True)
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(execute_module, "save_pruned", disk_full)
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="autoprune"):
        run_search(tiny_study(tmp_path), out, {"budget.trials": 1})
    assert "its checkpoint could not be written: OSError: [Errno 28] No space left" in caplog.text
    assert not list((out / "checkpoints").iterdir())  # no checkpoint, no .partial
    run = load_run(out)
    trial = run.complete("search").iloc[0]
    assert "No space left on device" in trial["checkpoint_error"]
    monkeypatch.undo()
    caplog.clear()
    exported = tmp_path / "exported"
    with caplog.at_level("WARNING", logger="autoprune"):
        assert cli.main(["export", str(out), "--max-size", "1", "--out", str(exported)]) == 0
    assert "is on the front, but its checkpoint could not be written" in caplog.text
    assert "a re-run of its configuration" in capsys.readouterr().out


# -- 7. Ctrl-C ------------------------------------------------------------------------------


def test_ctrl_c_prints_one_line_and_exits_130(
    tiny_run: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import autoprune.workflow as workflow_module

    def interrupted(session: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow_module, "run_trials", interrupted)
    run = copy_run(tiny_run, tmp_path)
    assert cli.main(["-q", "search", str(run)]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(f"autoprune search {run}")


# -- 8. labels ---------------------------------------------------------------------------


def test_num_labels_defaults_to_the_tasks_label_count(tmp_path: Path) -> None:
    study = tiny_study(tmp_path)
    train = pd.read_csv(tmp_path / "train.csv")
    train.loc[::3, "label"] = "neutral"
    train.to_csv(tmp_path / "train.csv", index=False)
    spec = load_study(study, {"finetune.steps": 0})
    assert spec.model.num_labels is None
    prepared = prepare(spec, tmp_path / "prepared", torch.device("cpu"))
    assert prepared.model.config.num_labels == 3 == prepared.task.num_labels


def test_a_trained_head_of_another_size_is_a_clear_error(tmp_path: Path) -> None:
    from autoprune.engine.models import LabelCountError

    model, tokenizer = autoprune.load_model(tiny_model_dir(tmp_path / "base"), num_labels=3)
    model.save_pretrained(tmp_path / "three")
    tokenizer.save_pretrained(tmp_path / "three")
    with pytest.raises(LabelCountError, match="trained for 3 labels, not 2"):
        autoprune.load_model(tmp_path / "three", num_labels=2)


def test_an_empty_label_names_the_file_and_row(tmp_path: Path) -> None:
    tiny_study(tmp_path)
    train = tmp_path / "train.csv"
    lines = train.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + ","  # data row 4 has no label
    train.write_text("\n".join(lines) + "\n")
    _, tokenizer = autoprune.load_model(tmp_path / "model", num_labels=2)
    spec = DataSpec(train=train, test=tmp_path / "test.csv", text=["sentence"], search_samples=20)
    with pytest.raises(DataError, match=r"train.csv: column 'label' is empty in 1 row.*\[4\]"):
        load_task(spec, tokenizer, 12)


# -- 9. reading never creates; files are read strictly ---------------------------------------


def test_reading_commands_never_create_files(tiny_run: Path, tmp_path: Path, capsys) -> None:
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(tiny_run / "study.yaml", started / "study.yaml")
    for command in ("pareto", "plot"):
        assert cli.main([command, str(started)]) == 2
        assert "has no optuna.db: no search has started" in error_of(capsys)
    assert sorted(p.name for p in started.iterdir()) == ["study.yaml"]
    missing = tmp_path / "missing"
    for command in ("baseline", "pareto", "export"):
        extra = ["--trial", "0", "--out", str(tmp_path / "x")] if command == "export" else []
        assert cli.main([command, str(missing), *extra]) == 2
        assert f"run directory not found: {missing}" in error_of(capsys)
    assert not missing.exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "text,message",
    [
        ("heads: {min: 0.25, max: 1.0, step: 0.5}", r"key 'heads': .*step \(0.5\) does not"),
        ("heads: {min: 0.5, max: 0.5}\nffn: {min: 1, max: 1}", "the space holds one config"),
        ("heads: {min: 0.1}\nheads: {min: 0.2}", "found the key 'heads' twice"),
        ("heads: {min: true}", r"key 'heads.min': .*not a boolean"),
    ],
)
def test_bad_search_space_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(StudyError, match=message) as error:
        load_space(path)
    assert str(path) in str(error.value)


def test_a_space_with_one_point_on_the_model_is_refused() -> None:
    from conftest import tiny_model

    from autoprune.search.space import SearchSpace, SearchSpaceSpec

    spec = SearchSpaceSpec.model_validate({"heads": {"min": 0.9, "max": 1.0}})  # 4 heads: 4..4
    with pytest.raises(StudyError, match="every parameter has a single value"):
        SearchSpace(spec, autoprune.describe(tiny_model("bert")))


@pytest.mark.parametrize(
    "section,message",
    [
        ({"budget": {"trials": True}}, r"key 'budget.trials': .*not a boolean"),
        ({"retrain": {"lr": True}}, r"key 'retrain.lr': .*not a boolean"),
        ({"data": {"search_samples": False}}, r"key 'data.search_samples'"),
    ],
)
def test_booleans_are_not_numbers(tmp_path: Path, section: dict, message: str) -> None:
    study = yaml.safe_load(tiny_study(tmp_path).read_text())
    for key, values in section.items():
        study[key] = {**study[key], **values}
    path = tmp_path / "bool.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(StudyError, match=message):
        load_study(path)


def test_duplicate_keys_in_a_study_name_the_key_and_file(tmp_path: Path) -> None:
    path = tiny_study(tmp_path)
    path.write_text(path.read_text() + "name: again\n")
    pattern = r"(?s)tiny.yaml: not valid YAML.*the key 'name' twice.*tiny.yaml\", line 26"
    with pytest.raises(StudyError, match=pattern):
        load_study(path)


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == (
        f"autoprune {autoprune.__version__}"
    )


def test_hub_library_logs_are_not_printed_twice(tmp_path: Path, capsys) -> None:
    """huggingface_hub and datasets print through their own handlers; reaching the root
    logger as well (where the command prints) showed every hub retry twice."""
    import logging

    assert cli.main(["pareto", str(tmp_path / "missing")]) == 2
    for library in ("huggingface_hub", "datasets"):
        assert not logging.getLogger(library).propagate


# -- 10. only our own errors are user errors -------------------------------------------------


def test_an_internal_error_keeps_its_traceback(tiny_run: Path, monkeypatch) -> None:
    import autoprune.reports.results as results

    def broken(*args: object, **kwargs: object) -> str:
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(results, "render", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["pareto", str(tiny_run)])


def test_every_user_error_type_derives_from_the_base() -> None:
    from autoprune.engine.models import LabelCountError
    from autoprune.reports.export import ExportError
    from autoprune.tasks.data import DataNotFoundError

    for error in (
        StudyError,
        autoprune.PruneConfigError,
        autoprune.ModelNotFoundError,
        autoprune.UnsupportedModelError,
        DataError,
        DataNotFoundError,
        ExportError,
        LabelCountError,
    ):
        assert issubclass(error, AutopruneError), error
    assert issubclass(autoprune.ModelNotFoundError, FileNotFoundError)
    assert issubclass(StudyError, ValueError)


# -- 11. plots leave matplotlib's backend alone ------------------------------------------------


def test_plots_leave_the_matplotlib_backend_alone(tiny_run: Path, tmp_path: Path) -> None:
    import autoprune.reports.plots as plots

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        importlib.reload(plots)
        assert matplotlib.get_backend() == "svg"
        png, _ = plots.plot(load_run(tiny_run), tmp_path)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_shipped_search_spaces_still_load() -> None:
    for space in (REPO / "search_spaces").glob("*.yaml"):
        load_space(space)
