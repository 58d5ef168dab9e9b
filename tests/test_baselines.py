"""Baselines trained into a run: each kind keeps its own front's checkpoints, `baseline`
prints the front of every kind it trained, and export loads a baseline's saved weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from autoprune import cli
from autoprune.reports.results import load_run
from autoprune.run.rundir import RunDir


def test_each_baseline_kind_keeps_and_exports_its_own_front(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    command = ["-q", "baseline", str(run_dir), "--ratios", "0.5"]
    grid = ["--heads-ratios", "0.25,0.75", "--ffn-ratios", "0.5"]
    assert cli.main(command + grid) == 0
    printed = capsys.readouterr().out
    assert "uniform front" in printed and "layer-uniform front" in printed
    run = load_run(run_dir)
    assert len(run.complete("uniform")) == 1 and len(run.complete("layer-uniform")) == 2
    for kind in ("uniform", "layer-uniform"):
        kept = {int(p.name.rsplit("_", 1)[1]) for p in run_dir.glob(f"checkpoints/{kind}_*")}
        assert kept == set(run.front(kind)["trial"]), kind
    number = int(run.front("layer-uniform")["trial"].iloc[0])
    out = tmp_path / "exported"
    export = ["export", str(run_dir), "--kind", "layer-uniform", "--trial", str(number)]
    assert cli.main(export + ["--out", str(out)]) == 0
    assert f"exported trial {number} from its kept checkpoint" in capsys.readouterr().out


def test_stage_and_fidelity_are_on_every_record(tiny_run: Path, capsys) -> None:
    import json

    run = load_run(tiny_run)
    search = run.trials[run.trials["study"] == "search"]
    assert set(search["stage"]) == {"retrain"}
    assert set(search["fidelity"]) == {float(run.spec.retrain.steps)}
    assert cli.main(["pareto", str(tiny_run), "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)["front"]
    assert front and all(p["stage"] == "retrain" for p in front)


TARGETS = [0.5, 0.25, 0.15]


def test_global_and_uniform_baselines_at_target_sizes(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    import json

    from autoprune.run.session import open_run
    from autoprune.search.budget import BudgetSpace

    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    study = RunDir(run_dir).study_file
    layer_uniform = ["-q", "baseline", str(run_dir), "--kind", "layer-uniform", "--targets", "0.5"]
    assert cli.main(layer_uniform) == 2  # the default screening needs 160 search examples
    assert "screening.schedule: its last step scores examples 32 to 160" in capsys.readouterr().err
    resolved = yaml.safe_load(study.read_text())
    resolved["screening"]["schedule"] = [[8, 2], [12, 1]]  # within the 20 search examples
    study.write_text(yaml.safe_dump(resolved))
    command = ["-q", "baseline", str(run_dir), "--kind", "global", "--kind", "uniform"]
    command += ["--kind", "layer-uniform", "--targets", ",".join(map(str, TARGETS))]
    assert cli.main(command) == 0
    printed = capsys.readouterr().out
    assert "global front" in printed and "uniform front" in printed
    run = load_run(run_dir)
    space = BudgetSpace(open_run(run_dir).sizes, run.size_unit)
    for kind in ("global", "uniform", "layer-uniform"):  # and no ratios besides the targets
        trials = run.complete(kind)
        assert sorted(trials["target"]) == sorted(TARGETS), kind
        for size, target in zip(trials["size"], trials["target"], strict=True):
            assert abs(size - target) <= space.tolerance + 1e-12, (kind, target)
    assert all(len(set(heads)) == 1 for heads in run.complete("layer-uniform")["heads"])
    assert set(run.trials[run.trials["kind"] == "global"]["status"]) == {"complete"}

    assert cli.main(["pareto", str(run_dir), "--kind", "global", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [p["trial"] for p in shown["front"]] == list(run.front("global")["trial"])
    assert all(p["target"] in TARGETS for p in shown["front"])
    assert shown["global"]["trials"] == len(TARGETS)

    number = int(run.front("global")["trial"].iloc[0])
    export = ["export", str(run_dir), "--kind", "global", "--trial", str(number)]
    assert cli.main(export + ["--out", str(tmp_path / "exported")]) == 0
    assert f"exported trial {number} from its kept checkpoint" in capsys.readouterr().out

    assert cli.main(command) == 0  # all recorded: nothing is trained again
    assert len(load_run(run_dir).complete("global")) == len(TARGETS)
    assert len(load_run(run_dir).complete("layer-uniform")) == len(TARGETS)


def test_target_baselines_refuse_bad_arguments(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    assert cli.main(["baseline", str(run_dir), "--targets", "0.5"]) == 2
    assert "--targets needs --kind" in capsys.readouterr().err
    assert cli.main(["baseline", str(run_dir), "--kind", "global"]) == 2
    assert "the study names no objectives.targets to default to" in capsys.readouterr().err
    assert cli.main(["baseline", str(run_dir), "--kind", "global", "--targets", "0.0"]) == 2
    assert "target 0.0 (prunable) cannot be met by heads and neurons" in capsys.readouterr().err
    assert load_run(run_dir).complete("global").empty
