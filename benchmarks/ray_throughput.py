"""Throughput of the Ray backend against the local one, side by side in one run.

The same study (MiniLM on SST-2, ``studies/bench_sst2.yaml``, retraining shortened) and the
same configurations (the ``random`` controller, one seed, so every backend trains the very
same trials) run four ways on this machine:

- local, 1 thread: the local backend with one torch thread;
- ray, 1 at a time: Ray Tune on a local Ray, one trial at a time with 1 CPU;
- ray, 2 at a time: two concurrent trials with 1 CPU each;
- local, 2 threads: the local backend using both cores for one trial.

Reported: trials per hour, the mean time a trial spends inside its own work (prune,
retrain, evaluate), and the overhead per trial: wall time per trial minus that, which for
Ray includes starting Ray, shipping the prepared work and collecting checkpoints.
Writes ``benchmarks/results/ray_throughput.{json,md}``.
Run: ``python benchmarks/ray_throughput.py`` (about 15 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
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

from autoprune.backends import run_trials
from autoprune.workflow import opened_run

STUDY = REPO / "studies" / "bench_sst2.yaml"
SETUPS: dict[str, dict[str, Any]] = {
    "local, 1 thread": {"backend.name": "local", "backend.cpus_per_trial": 1},
    "ray, 1 at a time": {
        "backend.name": "ray",
        "backend.concurrent_trials": 1,
        "backend.cpus_per_trial": 1,
    },
    "ray, 2 at a time": {
        "backend.name": "ray",
        "backend.concurrent_trials": 2,
        "backend.cpus_per_trial": 1,
    },
    "local, 2 threads": {"backend.name": "local", "backend.cpus_per_trial": 2},
}

log = logging.getLogger("autoprune")


def measure(name: str, overrides: dict[str, Any], root: Path, shared: Path) -> dict[str, Any]:
    out = run_dir_sharing(root / name.replace(", ", "-").replace(" ", "_"), shared)
    with opened_run(STUDY, out, overrides) as session:
        if session.search.count_spent():
            raise SystemExit(f"{out} already holds trials; remove it to measure again")
        started = time.perf_counter()
        run_trials(session)
        wall = time.perf_counter() - started
    study = session.search.study
    trials = [t for t in study.trials if t.user_attrs.get("status") == "complete"]
    inside = [t.user_attrs["seconds"]["total"] for t in trials]
    result = {
        "trials": len(trials),
        "wall_s": wall,
        "trials_per_hour": 3600 * len(trials) / wall,
        "mean_trial_work_s": statistics.mean(inside),
        "wall_per_trial_s": wall / len(trials),
    }
    concurrent = session.spec.backend.concurrent_trials
    result["overhead_per_trial_s"] = wall * concurrent / len(trials) - result["mean_trial_work_s"]
    log.info("%s: %s", name, json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--retrain-steps", type=int, default=20)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "runs" / "throughput"))
    parser.add_argument(
        "--prepared",
        default=str(REPO / "benchmarks" / "runs" / "sst2" / "prepared"),
        help="prepared work to share (made if absent)",
    )
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:  # tiny data prepared apart from the real runs
        args.trials, args.retrain_steps = 2, 2
        args.prepared = str(Path(args.out) / "prepared")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    common = {
        "controller.name": "random",
        "controller.seed": 0,
        "budget.trials": args.trials,
        "baseline.ratios": [],
        **(SMOKE_OVERRIDES if args.smoke else {}),
        "retrain.steps": args.retrain_steps,
    }
    rows = {
        name: measure(name, {**common, **extra}, Path(args.out), Path(args.prepared))
        for name, extra in SETUPS.items()
    }
    local = rows["local, 1 thread"]
    report = {
        "command": "python benchmarks/ray_throughput.py",
        "trials": args.trials,
        "retrain_steps": args.retrain_steps,
        "setups": rows,
        "ray_overhead_per_trial_s": rows["ray, 1 at a time"]["wall_per_trial_s"]
        - local["wall_per_trial_s"],
    }
    lines = [
        f"MiniLM on SST-2, {args.trials} identical trials per setup ({args.retrain_steps} "
        f"retraining steps each), on this 2-core machine, one run: `{report['command']}`.",
        "",
        "| setup | trials/hour | wall s per trial | trial work s (mean) | overhead s per trial |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['trials_per_hour']:.0f} | {row['wall_per_trial_s']:.1f} "
            f"| {row['mean_trial_work_s']:.1f} | {row['overhead_per_trial_s']:.1f} |"
        )
    lines += [
        "",
        f"Ray against local, both one trial at a time on 1 CPU: "
        f"{report['ray_overhead_per_trial_s']:+.1f} s of wall time per trial.",
    ]
    write_results("ray_throughput", report, lines, results_dir(args.smoke, Path(args.out)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
