"""Search quality: controllers against uniform and layer-uniform baselines trained the same way.

For each task (MiniLM on SST-2, the headline, and RTE) and each retraining mode (the brief
distillation retraining of the study file, and retrain-free, 0 steps), every controller
(tpe, nsga2, rl, random) gets the same trial budget, over several seeds (the controller's
and the retraining's). Two baselines get the same recipe and seeds: uniform (one keep ratio
for heads and feed-forward in every layer) and layer-uniform (one configuration in every
layer, head and feed-forward ratios chosen independently, on a grid).

Every front is chosen on the search split; what is reported is read on the test split (the
task's dev set), which no controller saw: hypervolume (reference: chance level, size 1.0)
and the best test metric at size <= 0.5 and <= 0.25 of the dense prunable parameters (with a
tolerance of 0.001: keeping exactly half of the heads and neurons gives 0.5002, since the
output projections' biases stay).
The search-split hypervolume is reported beside it, to show what selection on it inflates.

Runs are resumable (re-run the command); prepared work is shared by the runs of a task.
Results: ``benchmarks/results/search_quality.{json,md}`` and one plot per task and mode.
Run: ``python benchmarks/search_quality.py`` (about 3 hours on 2 CPU cores).
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
from common import (  # noqa: E402
    REPO,
    RUNS,
    SMOKE_OVERRIDES,
    add_smoke_flag,
    results_dir,
    run_dir_sharing,
    write_results,
)

from autoprune.reports.results import Run, load_run  # noqa: E402
from autoprune.workflow import run_baselines, run_search  # noqa: E402

STUDIES = {"sst2": REPO / "studies" / "bench_sst2.yaml", "rte": REPO / "studies" / "bench_rte.yaml"}
CONTROLLERS = ("tpe", "nsga2", "rl", "random")
UNIFORM = [0.25, 0.375, 0.5, 0.75]
GRID = [0.25, 0.5, 0.75]  # layer-uniform: every (heads, ffn) pair of these
SIZES = (0.5, 0.25)
SIZE_TOLERANCE = 0.001
COLOURS = {
    "tpe": "#1f77b4",
    "nsga2": "#9467bd",
    "rl": "#d62728",
    "random": "#7f7f7f",
    "uniform": "#ff7f0e",
    "layer-uniform": "#2ca02c",
}

log = logging.getLogger("autoprune")


def controller_run(
    root: Path, task: str, mode: str, controller: str, seed: int, overrides: dict[str, Any]
) -> Run:
    out = run_dir_sharing(root / task / mode / f"{controller}-s{seed}", root / task / "prepared")
    run_search(
        STUDIES[task],
        out,
        {**overrides, "controller.name": controller, "controller.seed": seed, "retrain.seed": seed},
    )
    return load_run(out)


def baseline_run(root: Path, task: str, mode: str, seed: int, overrides: dict[str, Any]) -> Run:
    out = run_dir_sharing(root / task / mode / f"baselines-s{seed}", root / task / "prepared")
    overrides = {**overrides, "retrain.seed": seed, "budget.trials": 1}
    run_baselines(STUDIES[task], out, overrides, uniform=UNIFORM, head_ratios=GRID, ffn_ratios=GRID)
    return load_run(out)


def scores(run: Run, kind: str) -> dict[str, float | None]:
    """Hypervolumes and best test metrics at the size caps, fronts chosen on search."""
    result: dict[str, float | None] = {
        "hv_test": run.hypervolume(kind, "test"),
        "hv_search": run.hypervolume(kind, "search"),
        "trials": float(len(run.complete(kind))),
    }
    for cap in SIZES:
        best = run.best_under(cap + SIZE_TOLERANCE, kind)
        result[f"best_test_at_{cap}"] = None if best is None else float(best["metric_test"])
    return result


def aggregate(values: list[dict[str, float | None]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in values[0]:
        present = [v[key] for v in values if v[key] is not None]
        out[key] = {
            "mean": statistics.mean(present) if present else None,
            "std": statistics.stdev(present) if len(present) > 1 else 0.0,
            "n": len(present),
            "values": [v[key] for v in values],
        }
    return out


def plot_fronts(runs: dict[str, Run], title: str, path: Path) -> None:
    """Seed-0 fronts of every method on both splits (chosen on search), with the dense model."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    any_run = next(iter(runs.values()))
    for axis, split in zip(axes, ("search", "test"), strict=True):
        for method, run in runs.items():
            kind = method if method in ("uniform", "layer-uniform") else "search"
            front = run.front(kind)
            axis.plot(
                front["size"],
                front[f"metric_{split}"],
                marker="o",
                markersize=4,
                drawstyle="steps-post",
                color=COLOURS[method],
                label=method,
            )
        dense = getattr(any_run.dense, f"metric_{split}")
        axis.scatter([1.0], [dense], marker="*", s=180, color="black", label="dense", zorder=5)
        axis.set_title(f"{split} split" + (" (held out)" if split == "test" else ""))
        axis.set_xlabel("size (prunable parameters, ratio to dense)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(any_run.metric)
    axes[1].legend(loc="lower right", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        "Fronts chosen on the search split; metrics read on the test split (GLUE dev). "
        "Mean ± standard deviation over seeds (controller and retraining seed); "
        f"`{report['command']}`: {sum(b['trial_minutes'] for b in report['blocks']):.0f} "
        f"minutes of trials on {report['threads']} CPU threads (this invocation: "
        f"{report['minutes']:.0f} minutes; runs already done are read back, not re-run). "
        f"Size caps allow {SIZE_TOLERANCE} for the output biases that pruning keeps; "
        "— : no point of the front within the cap.",
        "",
    ]
    for block in report["blocks"]:
        lines += [
            f"### {block['task']}, {block['mode']} ({block['trials']} trials per controller, "
            f"{block['retrain_steps']} retraining steps, {len(block['seeds'])} seed(s); "
            f"{block['trial_minutes']:.0f} minutes of trials)",
            "",
            f"Dense model: {block['dense_test']:.4f} test, {block['dense_search']:.4f} search.",
            "",
            "| method | HV test | HV search | best test @ size ≤ 0.5 | best test @ size ≤ 0.25 |",
            "|---|---|---|---|---|",
        ]
        for method, agg in block["methods"].items():

            def cell(key: str, agg: dict = agg, seeds: int = len(block["seeds"])) -> str:
                entry = agg[key]
                if entry["mean"] is None:
                    return "—"
                text = f"{entry['mean']:.4f}"
                if entry["n"] > 1:
                    text += f" ± {entry['std']:.4f}"
                if entry["n"] < seeds:
                    text += f" ({entry['n']} of {seeds} seeds reach it)"
                return text

            lines.append(
                f"| {method} | {cell('hv_test')} | {cell('hv_search')} | "
                f"{cell('best_test_at_0.5')} | {cell('best_test_at_0.25')} |"
            )
        lines += ["", f"![fronts]({block['plot']})", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="search quality against baselines")
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for SST-2 (RTE: 1)")
    parser.add_argument("--trials", type=int, default=16, help="trials per controller run")
    parser.add_argument(
        "--free-trials", type=int, default=24, help="trials per controller run without retraining"
    )
    parser.add_argument("--rte-trials", type=int, default=10)
    parser.add_argument("--out", default=str(RUNS))
    add_smoke_flag(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import torch

    started = time.perf_counter()
    root = Path(args.out)
    results = results_dir(args.smoke, root)
    results.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": "python benchmarks/search_quality.py",
        "threads": torch.get_num_threads(),
        "blocks": [],
    }
    for task in args.tasks.split(","):
        modes = [("retrain", None)] + ([("retrain-free", 0)] if task == "sst2" else [])
        for mode, steps in modes:
            seeds = list(range(args.seeds if task == "sst2" else 1))
            trials = (
                args.free_trials
                if steps == 0
                else (args.trials if task == "sst2" else args.rte_trials)
            )
            overrides: dict[str, Any] = {"budget.trials": trials}
            overrides.update(SMOKE_OVERRIDES if args.smoke else {})
            if steps is not None:
                overrides["retrain.steps"] = steps
            log.info(
                "=== %s, %s: %d trials x %d controllers x %d seeds ===",
                task,
                mode,
                trials,
                len(CONTROLLERS),
                len(seeds),
            )
            per_method: dict[str, list[dict[str, float | None]]] = {}
            seed0: dict[str, Run] = {}
            trial_seconds = 0.0
            for seed in seeds:
                for controller in CONTROLLERS:
                    run = controller_run(root, task, mode, controller, seed, overrides)
                    per_method.setdefault(controller, []).append(scores(run, "search"))
                    seed0.setdefault(controller, run)
                    trial_seconds += float(run.trials["seconds"].sum())
                baselines = baseline_run(root, task, mode, seed, overrides)
                trial_seconds += float(baselines.trials["seconds"].sum())
                for kind in ("uniform", "layer-uniform"):
                    per_method.setdefault(kind, []).append(scores(baselines, kind))
                    seed0.setdefault(kind, baselines)
                log.info(
                    "%s %s seed %d done at %.0f min",
                    task,
                    mode,
                    seed,
                    (time.perf_counter() - started) / 60,
                )
            plot = f"search_quality_{task}_{mode}.png"
            plot_fronts(seed0, f"MiniLM on {task}, {mode}: fronts of seed 0", results / plot)
            any_run = next(iter(seed0.values()))
            report["blocks"].append(
                {
                    "task": task,
                    "mode": mode,
                    "trials": trials,
                    "retrain_steps": any_run.spec.retrain.steps,
                    "seeds": seeds,
                    "dense_test": any_run.dense.metric_test,
                    "dense_search": any_run.dense.metric_search,
                    "methods": {m: aggregate(v) for m, v in per_method.items()},
                    "plot": plot,
                    "trial_minutes": trial_seconds / 60,
                }
            )
            report["minutes"] = (time.perf_counter() - started) / 60
            write_results("search_quality", report, markdown(report), results)
    log.info("done in %.0f minutes", (time.perf_counter() - started) / 60)


if __name__ == "__main__":
    main()
