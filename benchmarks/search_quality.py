"""Search quality: the targeted search against uniform, layer-uniform and global pruning.

For each task (MiniLM on SST-2, the headline, and on CoLA, scored by Matthews correlation)
and each target size (0.5, 0.25 and 0.15 of the prunable parameters), over several seeds
(the controller's and the retraining's):

- **searched**: the targeted search of the task's study file (``evo``, screening many
  candidates of exactly the target size retrain-free, the best few retrained with
  distillation beside the uniform and global allocations); the model a user gets is the
  finalist with the best *search*-split metric.
- **uniform**: every layer keeps the same fraction of its heads and neurons.
- **layer-uniform**: the same heads in every layer, the rest shared evenly among the
  feed-forward blocks; the head count that screens best.
- **global**: heads and neurons ranked across layers by importance per cost (Kwon et al.).

Every baseline is retrained exactly like the finalists (same recipe, same seed); uniform and
global *are* finalists of the search (the same trial stands for both), layer-uniform is
trained into the same run. Two modes: ``retrain`` (the study's distillation retraining) and
``retrain-free`` (0 steps: the pruned models as they are).

Everything reported is read on the test split (GLUE dev), which no choice saw. For each task,
target and mode: the test metric's mean and standard deviation over seeds per method, and the
searched mean minus the best baseline's (the baseline with the best mean test metric) with a
paired bootstrap 95% interval over test examples (:mod:`autoprune.reports.compare`). Also the
wall time of each phase (preparation, screening, retraining) and the candidates screened.

Runs are resumable (re-run the command); prepared work is shared by the runs of a task.
Results: ``benchmarks/results/search_quality.{json,md}`` and a plot per task.
Run: ``python benchmarks/search_quality.py`` (about 2 hours on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    REPO,
    RUNS,
    SMOKE_OVERRIDES,
    add_smoke_flag,
    results_dir,
    run_dir_sharing,
    write_results,
)

from autoprune.reports.compare import (  # noqa: E402
    BASELINE_KINDS,
    METHODS,
    at_target,
    held_out,
    outputs_of,
    paired_bootstrap,
)
from autoprune.reports.results import Run, load_run  # noqa: E402
from autoprune.run.rundir import RunDir, study_name  # noqa: E402
from autoprune.strategies.targeted import screening_study_name  # noqa: E402
from autoprune.workflow import opened_run, run_baselines, run_search  # noqa: E402

STUDIES = {
    "sst2": REPO / "studies" / "targeted_sst2.yaml",
    "cola": REPO / "studies" / "targeted_cola.yaml",
}
TARGETS = (0.5, 0.25, 0.15)  # the default
MODES = {"retrain": None, "retrain-free": 0}  # retraining steps (None: the study's)
COLOURS = {
    "searched": "#1f77b4",
    "uniform": "#ff7f0e",
    "layer-uniform": "#2ca02c",
    "global": "#9467bd",
}
RESAMPLES = 2000

log = logging.getLogger("autoprune")


def run_seed(root: Path, task: str, mode: str, seed: int, overrides: dict[str, Any]) -> Run:
    """The task's targeted search and its layer-uniform baselines for one seed and mode."""
    out = run_dir_sharing(root / task / mode / f"s{seed}", root / task / "prepared")
    seeded = {**overrides, "controller.seed": seed, "retrain.seed": seed}
    if MODES[mode] is not None:
        seeded["retrain.steps"] = MODES[mode]
    run_search(STUDIES[task], out, seeded)
    targets = overrides["objectives.targets"]
    run_baselines(out, targets=[("layer-uniform", t) for t in targets])
    return load_run(out)


def chosen(run: Run, target: float) -> dict[str, pd.Series]:
    """Every method's trial at ``target`` (:func:`autoprune.reports.compare.at_target`)."""
    found = at_target(run, target)
    missing = [method for method in METHODS if method not in found]
    if missing:
        raise RuntimeError(f"{run.path}: no {', '.join(missing)} trial at target {target}")
    return found


def phase_seconds(run: Run) -> dict[str, float]:
    """Seconds spent screening (every candidate of every target) and retraining (every
    finalist and baseline), and candidates screened, from the run's records."""
    spec = run.spec
    storage = RunDir(run.path).storage_url(spec)
    screened, screening = 0, 0.0
    for target in spec.objectives.targets:
        name = study_name(spec, screening_study_name(target))
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False):
            screened += 1
            screening += float((trial.user_attrs.get("seconds") or {}).get("total", 0.0))
    retraining = float(run.trials["seconds"].fillna(0.0).sum())
    return {"screening": screening, "retraining": retraining, "candidates": float(screened)}


def summarize(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def compare(runs: list[Run], task: str, mode: str) -> tuple[list[dict[str, Any]], list[dict]]:
    """The ``comparisons`` entries of one task and mode (one per target), and the rows of
    every chosen trial."""
    model_task, test = held_out(runs[0])
    comparisons, rows = [], []
    for target in runs[0].spec.objectives.targets:
        picks = [chosen(run, target) for run in runs]
        metrics = {m: summarize([float(p[m]["metric_test"]) for p in picks]) for m in METHODS}
        best = max(BASELINE_KINDS, key=lambda m: metrics[m]["mean"])
        if runs[0].direction == "minimize":
            best = min(BASELINE_KINDS, key=lambda m: metrics[m]["mean"])
        outputs = {
            m: [outputs_of(r, p[m]) for r, p in zip(runs, picks, strict=True)] for m in METHODS
        }
        gap = paired_bootstrap(
            model_task, test, outputs["searched"], outputs[best], resamples=RESAMPLES
        )
        comparisons.append(
            {
                "task": task,
                "target": target,
                "mode": mode,
                "searched_mean": metrics["searched"]["mean"],
                "baselines": {m: metrics[m]["mean"] for m in BASELINE_KINDS},
                "best_baseline": best,
                "best_baseline_mean": metrics[best]["mean"],
                "diff": gap.diff,
                "ci95": [gap.low, gap.high],
                "std": {m: metrics[m]["std"] for m in METHODS},
                "values": {m: metrics[m]["values"] for m in METHODS},
                "searched_origins": [list(p["searched"]["origins"] or []) for p in picks],
                "seeds": len(runs),
            }
        )
        for seed, pick in enumerate(picks):
            for method, row in pick.items():
                rows.append(
                    {
                        "task": task,
                        "mode": mode,
                        "target": target,
                        "seed": seed,
                        "method": method,
                        "size": float(row["size"]),
                        "metric_search": float(row["metric_search"]),
                        "metric_test": float(row["metric_test"]),
                        "heads": list(row["heads"]),
                        "ffn": list(row["ffn"]),
                    }
                )
    return comparisons, rows


def plot(report: dict[str, Any], task: str, path: Path) -> None:
    """Test metric against target, mean ± sd over seeds, one panel per mode."""
    figure, axes = plt.subplots(1, len(MODES), figsize=(11, 4.2), sharey=True)
    for axis, mode in zip(axes, MODES, strict=True):
        entries = [c for c in report["comparisons"] if c["task"] == task and c["mode"] == mode]
        for offset, method in enumerate(METHODS):
            xs = [c["target"] * (1 + 0.02 * (offset - 1.5)) for c in entries]
            ys = [
                c["searched_mean"] if method == "searched" else c["baselines"][method]
                for c in entries
            ]
            errors = [c["std"][method] for c in entries]
            axis.errorbar(
                xs, ys, yerr=errors, marker="o", capsize=3, color=COLOURS[method], label=method
            )
        dense = report["tasks"][task]["dense_test"]
        axis.axhline(dense, color="black", linestyle="--", linewidth=1, label="dense")
        axis.set_title(f"{mode}")
        axis.set_xlabel("size (prunable parameters, ratio to dense)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"{report['tasks'][task]['metric']}, test split")
    axes[-1].legend(loc="lower right", fontsize=8)
    figure.suptitle(f"MiniLM on {task}: test metric at each target ({report['seeds']} seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        f"`{report['command']}` on {report['threads']} CPU threads, {report['seeds']} seeds; "
        f"{report['candidates']} candidates screened per target and seed. Test split (GLUE "
        "dev), never seen by any choice. Mean ± sd over seeds; diff = searched − best "
        f"baseline, with a paired bootstrap 95% interval over test examples ({RESAMPLES} "
        "resamples). Searched = the finalist with the best search-split metric (uniform "
        "and global are finalists too).",
        "",
    ]
    for task, info in report["tasks"].items():
        lines += [
            f"### {task} ({info['metric']}; dense {info['dense_test']:.4f} test, "
            f"{info['dense_search']:.4f} search)",
            "",
            "| mode | target | searched | uniform | layer-uniform | global | diff vs best "
            "(95% CI) |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in report["comparisons"]:
            if c["task"] != task:
                continue

            def cell(method: str, c: dict[str, Any] = c) -> str:
                mean = c["searched_mean"] if method == "searched" else c["baselines"][method]
                return f"{mean:.4f} ± {c['std'][method]:.4f}"

            low, high = c["ci95"]
            lines.append(
                f"| {c['mode']} | {c['target']} | "
                + " | ".join(cell(m) for m in METHODS)
                + f" | {c['diff']:+.4f} vs {c['best_baseline']} [{low:+.4f}, {high:+.4f}] |"
            )
        phases = info["minutes"]
        lines += [
            "",
            "Wall time: "
            + ", ".join(f"{phase} {minutes:.1f} min" for phase, minutes in phases.items())
            + f"; {info['candidates_screened']} candidates screened in all.",
            "",
            f"![{task}]({info['plot']})",
            "",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="targeted search against baselines")
    parser.add_argument("--tasks", default="sst2,cola")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=256, help="screened per target")
    parser.add_argument(
        "--targets", default=",".join(map(str, TARGETS)), help="sizes, comma-separated"
    )
    parser.add_argument("--out", default=str(RUNS / "targeted"))
    add_smoke_flag(parser)
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    started = time.perf_counter()
    root = Path(args.out)
    results = results_dir(args.smoke, root)
    results.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {
        "objectives.targets": targets,
        "screening.candidates": args.candidates,
    }
    if args.smoke:
        overrides.update(SMOKE_OVERRIDES)
        overrides.update({"screening.offspring": 4, "screening.schedule": [[8, 2], [16, 1]]})
        overrides["screening.candidates"] = min(args.candidates, 8)
    report: dict[str, Any] = {
        "command": "python benchmarks/search_quality.py",
        "threads": torch.get_num_threads(),
        "seeds": args.seeds,
        "candidates": overrides["screening.candidates"],
        "targets": targets,
        "tasks": {},
        "comparisons": [],
        "trials": [],
    }
    for task in args.tasks.split(","):
        prepared_at = time.perf_counter()
        prepare_only = run_dir_sharing(root / task / "prepare", root / task / "prepared")
        with opened_run(STUDIES[task], prepare_only, overrides):
            pass
        spent = {"preparation": time.perf_counter() - prepared_at}
        spent.update({"screening": 0.0, "retraining": 0.0})
        candidates = 0
        for mode in MODES:
            runs = []
            for seed in range(args.seeds):
                log.info("=== %s, %s, seed %d ===", task, mode, seed)
                run = run_seed(root, task, mode, seed, overrides)
                runs.append(run)
                phases = phase_seconds(run)
                spent["screening"] += phases["screening"]
                spent["retraining"] += phases["retraining"]
                candidates += int(phases["candidates"])
            comparisons, rows = compare(runs, task, mode)
            report["comparisons"] += comparisons
            report["trials"] += rows
            dense = runs[0].dense
            report["tasks"][task] = {
                "metric": runs[0].metric,
                "dense_test": dense.metric_test,
                "dense_search": dense.metric_search,
                "minutes": {phase: seconds / 60 for phase, seconds in spent.items()},
                "candidates_screened": candidates,
                "plot": f"search_quality_{task}.png",
            }
            report["minutes"] = (time.perf_counter() - started) / 60
            write_results("search_quality", report, markdown(report), results)
        plot(report, task, results / f"search_quality_{task}.png")
        write_results("search_quality", report, markdown(report), results)
    log.info("done in %.0f minutes", (time.perf_counter() - started) / 60)


if __name__ == "__main__":
    main()
