"""Search quality: the targeted search against uniform, layer-uniform and global pruning.

For each task (MiniLM on SST-2, the headline, and on CoLA, scored by Matthews correlation)
and each target size (0.5, 0.25 and 0.15 of the prunable parameters), over several seeds
(the controller's and the retraining's):

- **searched**: the targeted search of the task's study file (``evo``, screening many
  candidates of exactly the target size retrain-free, the best few retrained with
  distillation beside the uniform and global allocations); the model a user gets is the
  search's choice among the finalists, made on the *search* split
  (:func:`autoprune.reports.compare.choose`).
- **uniform**: every layer keeps the same fraction of its heads and neurons.
- **layer-uniform**: the same heads in every layer, the rest shared evenly among the
  feed-forward blocks; the head count that screens best.
- **global**: heads and neurons ranked across layers by importance per cost (Kwon et al.).

Every baseline is retrained exactly like the finalists (same recipe, same seed); uniform and
global *are* finalists of the search (the same trial stands for both), layer-uniform is
trained into the same run. Two modes are read from the same runs: ``retrain`` (after the
study's distillation retraining; the search's choice is
:func:`autoprune.reports.compare.choose`'s, on the search split after retraining) and
``retrain-free`` (the same finalists and baselines as pruned, before any retraining; the
choice is the finalist with the best search metric before retraining, a search without
retraining picking from the same screening by the ``best`` rule).

Everything reported is read on the test split (GLUE dev), which no choice saw. For each task,
target and mode: the test metric's mean and standard deviation over seeds per method, and the
searched mean minus the best baseline's (the baseline with the best mean test metric) with a
paired bootstrap 95% interval over test examples (:mod:`autoprune.reports.compare`). Also the
wall time of each phase (preparation, screening, retraining) and the candidates screened.

Runs are resumable (re-run the command); prepared work is shared by the runs of a task.
Results: ``benchmarks/results/search_quality.{json,md}`` and a plot per task; a run of some
of the tasks (``--tasks``) keeps the other tasks' entries there, each task naming the command
and the choice rule that measured it.
Run: ``python benchmarks/search_quality.py`` (about 2 hours on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import time
from collections.abc import Iterator
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
from scipy.stats import spearmanr  # noqa: E402

from autoprune.engine.prune import PruneConfig, prune  # noqa: E402
from autoprune.reports.compare import (  # noqa: E402
    BASELINE_KINDS,
    METHODS,
    at_target,
    choose,
    outputs_of,
    paired_bootstrap,
    split_of,
)
from autoprune.reports.results import Run, load_run, screened  # noqa: E402
from autoprune.run.session import open_run  # noqa: E402
from autoprune.workflow import opened_run, run_baselines, run_search  # noqa: E402

STUDIES = {
    "sst2": REPO / "studies" / "targeted_sst2.yaml",
    "cola": REPO / "studies" / "targeted_cola.yaml",
}
TARGETS = (0.5, 0.25, 0.15)  # the default
MODES = ("retrain", "retrain-free")
COLOURS = {
    "searched": "#1f77b4",
    "uniform": "#ff7f0e",
    "layer-uniform": "#2ca02c",
    "global": "#9467bd",
}
RESAMPLES = 2000

log = logging.getLogger("autoprune")


def run_seed(root: Path, task: str, seed: int, overrides: dict[str, Any]) -> Run:
    """The task's targeted search and its layer-uniform baselines for one seed; a target
    whose layer-uniform baseline is recorded already is not chosen and trained again."""
    out = run_dir_sharing(root / task / f"s{seed}", root / task / "prepared")
    run_search(STUDIES[task], out, {**overrides, "controller.seed": seed, "retrain.seed": seed})
    done = set(load_run(out).complete("layer-uniform")["target"])
    missing = [t for t in overrides["objectives.targets"] if t not in done]
    if missing:
        run_baselines(out, targets=[("layer-uniform", t) for t in missing])
    return load_run(out)


def chosen(run: Run, target: float, mode: str) -> dict[str, pd.Series]:
    """Every method's trial at ``target`` (:func:`autoprune.reports.compare.at_target`);
    retrain-free, the search's choice is the finalist with the best search metric before
    retraining."""
    found = at_target(run, target)
    missing = [method for method in METHODS if method not in found]
    if missing:
        raise RuntimeError(f"{run.path}: no {', '.join(missing)} trial at target {target}")
    if mode == "retrain-free":
        finalists = run.complete("search")
        finalists = finalists[finalists["target"] == target]
        ordered = finalists.sort_values("metric_search_before", ascending=run.higher_is_better)
        found["searched"] = ordered.iloc[-1]
    return found


class Unretrained:
    """Test outputs of a run's trials as pruned, before retraining (computed here: a trial
    records its test outputs after retraining only)."""

    def __init__(self, run: Run) -> None:
        self.prepared = open_run(run.path).prepared
        self.cache: dict[str, torch.Tensor] = {}

    def outputs(self, row: pd.Series) -> torch.Tensor:
        config = PruneConfig(heads=list(row["heads"]), ffn=list(row["ffn"]))
        key = config.to_json()
        if key not in self.cache:
            prepared = self.prepared
            model = prune(prepared.model, config, prepared.scores)
            self.cache[key] = prepared.task.example_outputs(model, prepared.data.test)
        return self.cache[key]


def screening_trials(run: Run) -> Iterator[tuple[float, optuna.trial.FrozenTrial]]:
    """Every screened candidate of the run, with its target."""
    for target in run.spec.objectives.targets:
        for trial in screened(run, target):
            yield target, trial


def phase_seconds(run: Run) -> dict[str, float]:
    """Seconds spent screening (every candidate of every target) and retraining (every
    finalist and baseline), and candidates screened, from the run's records."""
    screened, screening = 0, 0.0
    for _, trial in screening_trials(run):
        screened += 1
        screening += float((trial.user_attrs.get("seconds") or {}).get("total", 0.0))
    retraining = float(run.trials["seconds"].fillna(0.0).sum())
    return {"screening": screening, "retraining": retraining, "candidates": float(screened)}


def finalist_agreement(runs: list[Run]) -> dict[str, dict[str, int]]:
    """How well two cheaper scores order the finalists of one seed and target as their test
    metric after retraining does: the screening fitness (retrain-free, on the last selection
    slice) and the search metric after retraining (what the choice starts from). Per score,
    the pairs of finalists it orders as the test metric does (``concordant``) out of the
    pairs that both tell apart (``pairs``); half of them is chance."""
    counts = {score: {"concordant": 0, "pairs": 0} for score in ("screening", "search")}
    for run in runs:
        sign = 1.0 if run.higher_is_better else -1.0
        fitness = {  # lower is better; every finalist was screened on the last slice
            (target, PruneConfig.from_dict(t.user_attrs["config"]).to_json()): t.values[0]
            for target, t in screening_trials(run)
            if t.state == optuna.trial.TrialState.COMPLETE
        }
        finalists = run.complete("search")
        for target, group in finalists.groupby("target"):
            rows = []
            for _, row in group.iterrows():
                config = PruneConfig(heads=list(row["heads"]), ffn=list(row["ffn"])).to_json()
                quality = {"screening": -fitness[(target, config)]}
                quality["search"] = sign * float(row["metric_search"])
                rows.append((quality, sign * float(row["metric_test"])))
            for (a, test_a), (b, test_b) in itertools.combinations(rows, 2):
                for score, count in counts.items():
                    if a[score] != b[score] and test_a != test_b:
                        count["pairs"] += 1
                        count["concordant"] += (a[score] - b[score]) * (test_a - test_b) > 0
    return counts


def finalist_ceiling(runs: list[Run]) -> list[dict[str, Any]]:
    """Per target, what a perfect choice among the retrained finalists would give: the mean
    over seeds of the best finalist's test metric (``oracle_mean``), in how many seeds the
    search's choice was that finalist (``choice_hits``), and Spearman's rho, over every
    seed's finalists, of the test metric with the search metric after retraining (what
    chooses) and before it (what screening saw)."""
    found = []
    finalists = [(run, run.complete("search")) for run in runs]
    for target in runs[0].spec.objectives.targets:
        groups = [(run, table[table["target"] == target]) for run, table in finalists]
        tests = [group["metric_test"] for _, group in groups]
        best = [float(t.max() if runs[0].higher_is_better else t.min()) for t in tests]
        picked = [choose(run, target) for run, _ in groups]
        pooled = pd.concat([group for _, group in groups])
        found.append(
            {
                "target": target,
                "oracle_mean": statistics.mean(best),
                "choice_hits": sum(
                    p is not None and float(p["metric_test"]) == b
                    for p, b in zip(picked, best, strict=True)
                ),
                "seeds": len(runs),
                "spearman_search_after": float(
                    spearmanr(pooled["metric_search"], pooled["metric_test"]).statistic
                ),
                "spearman_search_before": float(
                    spearmanr(pooled["metric_search_before"], pooled["metric_test"]).statistic
                ),
            }
        )
    return found


def summarize(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def compare(runs: list[Run], task: str, mode: str) -> tuple[list[dict[str, Any]], list[dict]]:
    """The ``comparisons`` entries of one task and mode (one per target), and the rows of
    every chosen trial."""
    model_task, test = split_of(runs[0])
    unretrained = [Unretrained(run) for run in runs] if mode == "retrain-free" else []
    comparisons, rows = [], []
    for target in runs[0].spec.objectives.targets:
        picks = [chosen(run, target, mode) for run in runs]
        outputs: dict[str, list[torch.Tensor]] = {}
        for method in METHODS:
            if mode == "retrain-free":
                found = [u.outputs(p[method]) for u, p in zip(unretrained, picks, strict=True)]
            else:
                found = [outputs_of(r, p[method]) for r, p in zip(runs, picks, strict=True)]
            outputs[method] = found
        metrics = {
            m: summarize([model_task.metric_of(o, test) for o in outputs[m]]) for m in METHODS
        }
        ordered = sorted(BASELINE_KINDS, key=lambda m: model_task.score(metrics[m]["mean"]))
        best = ordered[-1]
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
                        "trial": int(row["trial"]),
                        "size": float(row["size"]),
                        "metric_search_before": float(row["metric_search_before"]),
                        "metric_search": float(row["metric_search"]),
                        "metric_test": metrics[method]["values"][seed],
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
        "Test split (GLUE dev), never seen by any choice. Mean ± sd over seeds; diff = "
        "searched − best "
        f"baseline, with a paired bootstrap 95% interval over test examples ({RESAMPLES} "
        "resamples). Searched = the search's choice among its finalists on the search split "
        "(the study's screening.choice; uniform "
        "and global are finalists too).",
        "",
    ]
    for task, info in report["tasks"].items():
        lines += [
            f"### {task} ({info['metric']}; dense {info['dense_test']:.4f} test, "
            f"{info['dense_search']:.4f} search)",
            "",
            f"Measured by `{info['command']}` on {info['threads']} CPU threads: "
            f"{info['seeds']} seeds, {info['candidates']} candidates screened per target and "
            f"seed; the search's choice: `{info['choice']}`.",
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
        phases, agreement = info["minutes"], info["finalist_agreement"]
        lines += [
            "",
            "Pairs of finalists (same seed and target) ordered as their test metric after "
            "retraining orders them: by the screening fitness (retrain-free) "
            f"{agreement['screening']['concordant']}/{agreement['screening']['pairs']}, by the "
            "search metric after retraining (what the choice starts from) "
            f"{agreement['search']['concordant']}/{agreement['search']['pairs']}; chance is half.",
            "",
            "| target | best finalist on test (mean) | choice = best finalist | Spearman "
            "(finalists, seeds pooled): search after retraining | search before |",
            "|---|---|---|---|---|",
            *(
                f"| {c['target']} | {c['oracle_mean']:.4f} | {c['choice_hits']}/{c['seeds']} | "
                f"{c['spearman_search_after']:+.2f} | {c['spearman_search_before']:+.2f} |"
                for c in info["finalist_ceiling"]
            ),
            "",
            "Time, the trials' work summed over seeds (preparation: the invocation that "
            "prepared): "
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
    parser.add_argument("--candidates", type=int, default=96, help="screened per target")
    parser.add_argument(
        "--targets", default=",".join(map(str, TARGETS)), help="sizes, comma-separated"
    )
    parser.add_argument("--out", default=str(RUNS / "targeted"))
    parser.add_argument("--fitness", help="screening fitness instead of the study files'")
    parser.add_argument(
        "--recovery-examples", type=int, help="screening recovery instead of the study files'"
    )
    parser.add_argument("--name", default="search_quality", help="of the results files")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--only-seed",
        type=int,
        help="run this seed's searches and baselines only and write no results (to run "
        "seeds side by side; a later run without it reads them back)",
    )
    add_smoke_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
    if args.fitness is not None:
        overrides["screening.fitness"] = args.fitness
    if args.recovery_examples is not None:
        overrides["screening.recovery_examples"] = args.recovery_examples
    if args.smoke:
        overrides.update(SMOKE_OVERRIDES)
        overrides.update({"screening.offspring": 4, "screening.schedule": [[8, 2], [16, 1]]})
        overrides["screening.candidates"] = min(args.candidates, 8)
    command = " ".join(["python benchmarks/search_quality.py", *sys.argv[1:]])
    tasks = args.tasks.split(",")
    report: dict[str, Any] = {
        "command": command,
        "threads": torch.get_num_threads(),
        "seeds": args.seeds,
        "candidates": overrides["screening.candidates"],
        "targets": targets,
        "tasks": {},
        "comparisons": [],
        "trials": [],
    }
    earlier = results / f"{args.name}.json"
    kept: dict[str, Any] = {"tasks": {}}
    if earlier.is_file() and args.only_seed is None:  # the other tasks' results are kept
        kept = json.loads(earlier.read_text())
        report["tasks"] = {t: v for t, v in kept["tasks"].items() if t not in tasks}
        for info in report["tasks"].values():  # measured before tasks named their own
            for key in ("command", "threads", "seeds", "candidates"):
                info.setdefault(key, kept[key])
            info.setdefault("choice", "best")
        for key in ("comparisons", "trials"):
            report[key] = [entry for entry in kept[key] if entry["task"] not in tasks]
    for task in tasks:
        prepared_at = time.perf_counter()
        read_back = (root / task / "prepared" / "fingerprint.json").is_file()
        prepare_only = run_dir_sharing(root / task / "prepare", root / task / "prepared")
        with opened_run(STUDIES[task], prepare_only, overrides):
            pass
        spent = {"preparation": time.perf_counter() - prepared_at}
        if read_back and task in kept["tasks"]:  # the invocation that prepared it timed it
            spent["preparation"] = kept["tasks"][task]["minutes"]["preparation"] * 60
        spent.update({"screening": 0.0, "retraining": 0.0})
        candidates = 0
        runs = []
        if args.only_seed is not None:
            run_seed(root, task, args.only_seed, overrides)
            continue
        for seed in range(args.seeds):
            log.info("=== %s, seed %d ===", task, seed)
            run = run_seed(root, task, seed, overrides)
            runs.append(run)
            phases = phase_seconds(run)
            spent["screening"] += phases["screening"]
            spent["retraining"] += phases["retraining"]
            candidates += int(phases["candidates"])
        dense = runs[0].dense
        report["tasks"][task] = {
            "metric": runs[0].metric,
            "dense_test": dense.metric_test,
            "dense_search": dense.metric_search,
            "minutes": {phase: seconds / 60 for phase, seconds in spent.items()},
            "candidates_screened": candidates,
            "finalist_agreement": finalist_agreement(runs),
            "finalist_ceiling": finalist_ceiling(runs),
            "plot": f"{args.name}_{task}.png",
            "command": command,
            "threads": torch.get_num_threads(),
            "seeds": args.seeds,
            "candidates": overrides["screening.candidates"],
            "choice": runs[0].spec.screening.choice,
        }
        for mode in MODES:
            comparisons, rows = compare(runs, task, mode)
            report["comparisons"] += comparisons
            report["trials"] += rows
        report["minutes"] = (time.perf_counter() - started) / 60
        plot(report, task, results / f"{args.name}_{task}.png")
        write_results(args.name, report, markdown(report), results)
    log.info("done in %.0f minutes", (time.perf_counter() - started) / 60)


if __name__ == "__main__":
    main()
