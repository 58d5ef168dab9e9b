"""Early stopping at an equal wall-clock budget: the same search with and without it.

MiniLM on SST-2 (``studies/bench_sst2.yaml``) with a longer retraining (``--retrain-steps``),
the TPE controller and one seed, given the same number of seconds twice: once with every
trial retrained to the end, once with multi-objective successive halving (rungs at a
quarter and at half of the retraining, the best half continuing). Reported: trials
evaluated (complete and stopped), the hypervolume reached (front chosen on the search
split, read on both splits) and the best test accuracy at size <= 0.5.
Writes ``benchmarks/results/early_stopping.{json,md}``.
Run: ``python benchmarks/early_stopping.py`` (twice ``--seconds``, 20 minutes by default).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import optuna
from common import (
    REPO,
    SMOKE_OVERRIDES,
    add_smoke_flag,
    results_dir,
    run_dir_sharing,
    write_results,
)

from autoprune.reports.results import load_run
from autoprune.workflow import run_search

STUDY = REPO / "studies" / "bench_sst2.yaml"

log = logging.getLogger("autoprune")


def one(name: str, overrides: dict[str, Any], root: Path, shared: Path) -> dict[str, Any]:
    out = run_dir_sharing(root / name, shared)
    run_search(STUDY, out, overrides)
    run = load_run(out)
    search = run.trials[run.trials["study"] == "search"]
    best = run.best_under(0.5)
    return {
        "complete": int((search["status"] == "complete").sum()),
        "stopped": int((search["status"] == "stopped").sum()),
        "hv_test": run.hypervolume("search", "test"),
        "hv_search": run.hypervolume("search", "search"),
        "best_test_at_0.5": None if best is None else float(best["metric_test"]),
        "dense_test": run.dense.metric_test,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="wall-clock budget of each")
    parser.add_argument("--retrain-steps", type=int, default=60)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "runs" / "early_stopping"))
    parser.add_argument(
        "--prepared", default=str(REPO / "benchmarks" / "runs" / "sst2" / "prepared")
    )
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:  # a few seconds each, on tiny data prepared apart from the real runs
        args.seconds, args.retrain_steps = 10.0, 4
        args.prepared = str(Path(args.out) / "prepared")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    steps = args.retrain_steps
    common = {
        "controller.name": "tpe",
        "controller.seed": 0,
        "budget.trials": None,
        "budget.wall_time": args.seconds,
        "baseline.ratios": [],
        **(SMOKE_OVERRIDES if args.smoke else {}),
        "retrain.steps": steps,
    }
    rungs = [steps // 4, steps // 2]
    rows = {
        "without early stopping": one("without", common, Path(args.out), Path(args.prepared)),
        "with early stopping": one(
            "with",
            {**common, "early_stopping": {"rungs": rungs, "keep": 0.5, "min_trials": 4}},
            Path(args.out),
            Path(args.prepared),
        ),
    }
    report = {
        "command": "python benchmarks/early_stopping.py",
        "seconds": args.seconds,
        "retrain_steps": steps,
        "rungs": rungs,
        "rows": rows,
    }
    lines = [
        f"MiniLM on SST-2, TPE, {args.seconds:.0f} s of wall time each, {steps} retraining "
        f"steps per full trial, rungs at steps {rungs} keeping the best half; one seed. "
        f"`{report['command']}`.",
        "",
        "| | trials complete | trials stopped | HV test | HV search | best test @ size ≤ 0.5 |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        best = row["best_test_at_0.5"]
        lines.append(
            f"| {name} | {row['complete']} | {row['stopped']} | {row['hv_test']:.4f} | "
            f"{row['hv_search']:.4f} | {'—' if best is None else f'{best:.4f}'} |"
        )
    write_results("early_stopping", report, lines, results_dir(args.smoke, Path(args.out)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
