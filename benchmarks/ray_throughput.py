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

Then a targeted search's screening (retrain-free, well under a second a candidate): the same
candidates at half the prunable parameters, each scored on the first step's calibration
examples, three ways taking turns, once the workers are started and the dense outputs
cached:

- local, 1 thread: in this process (:class:`~autoprune.backends.local.LocalExecutor`);
- ray, batched: two Ray workers of 1 CPU, one remote call per worker (the default);
- ray, 1 per call: the same workers, one remote call per candidate.

Reported: candidates per second, the work (time inside screening, summed), and the
overhead: worker time not spent screening (wall time times workers, minus the work), per
call (a remote call on Ray, a function call locally) and as a fraction of the work.

Writes ``benchmarks/results/ray_throughput.{json,md}``; a run of one part (``--parts``)
keeps the other part's last results.
Run: ``python benchmarks/ray_throughput.py`` (about 15 minutes on 2 CPU cores, of which the
screening part takes about 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from common import (
    REPO,
    SMOKE_OVERRIDES,
    add_smoke_flag,
    results_dir,
    run_dir_sharing,
    write_results,
)

from autoprune.backends import ray as ray_backend
from autoprune.backends import run_trials
from autoprune.backends.local import LocalExecutor
from autoprune.engine.prune import PruneConfig
from autoprune.run.session import Session
from autoprune.search.budget import BudgetSpace
from autoprune.strategies.executor import Executor
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

SCREEN_TARGET = 0.5  # of the prunable parameters
SCREEN_WORKERS = 2
SCREEN_ROUNDS = 4
SCREEN_BACKEND: dict[str, Any] = {
    "backend.name": "ray",
    "backend.concurrent_trials": SCREEN_WORKERS,
    "backend.cpus_per_trial": 1,
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


def candidates(session: Session, count: int, seed: int = 0) -> list[PruneConfig]:
    """``count`` allocations of size :data:`SCREEN_TARGET`, decoded from random weights."""
    space = BudgetSpace(session.sizes, session.spec.objectives.size)
    rng = random.Random(seed)
    weights = [[rng.random() for _ in space.slots] for _ in range(count)]
    return [space.to_config(space.decode(w, SCREEN_TARGET)) for w in weights]


def timed_screening(
    executor: Executor, configs: list[PruneConfig], examples: slice
) -> tuple[float, float]:
    """Wall time and work (time inside screening, summed) of screening ``configs``."""
    started = time.perf_counter()
    outcomes = executor.screen(configs, examples)
    wall = time.perf_counter() - started
    return wall, sum(o.seconds["total"] for o in outcomes)


def screening_row(
    name: str, wall: float, work: float, candidates: int, workers: int, calls: int
) -> dict[str, Any]:
    overhead = wall * workers - work  # worker time not spent screening
    row = {
        "candidates": candidates,
        "workers": workers,
        "calls": calls,
        "wall_s": wall,
        "candidates_per_s": candidates / wall,
        "work_per_candidate_s": work / candidates,
        "overhead_per_call_s": overhead / calls,
        "overhead_fraction": overhead / work,
    }
    log.info("%s: %s", name, json.dumps(row))
    return row


def screening(out: Path, shared: Path, overrides: dict[str, Any], count: int) -> dict[str, Any]:
    """Screening throughput in this process, and on Ray workers batched and not, measured
    once the workers are started and their dense outputs cached; the setups take turns
    (:data:`SCREEN_ROUNDS`), so a change in the machine's load hits each alike."""
    run = run_dir_sharing(out / "screening", shared)
    load = os.getloadavg()[0]  # other work on the machine slows every setup
    with opened_run(STUDY, run, {**overrides, **SCREEN_BACKEND}) as session:
        configs = candidates(session, count)
        examples = slice(0, session.spec.screening.schedule[0][0])
        torch.set_num_threads(1)
        with ray_backend.connected(session.spec.backend):
            local, remote = LocalExecutor(session), ray_backend.RayExecutor(session)
            setups: dict[str, tuple[Executor, int | None, int]] = {  # executor, batch, workers
                "local, 1 thread": (local, None, 1),
                "ray, batched": (remote, None, SCREEN_WORKERS),
                "ray, 1 per call": (remote, 1, SCREEN_WORKERS),
            }
            totals = {name: {"wall": 0.0, "work": 0.0, "calls": 0.0} for name in setups}
            try:
                local.screen(configs[:1], examples)
                remote.screen(configs[:SCREEN_WORKERS], examples)
                for turn in range(SCREEN_ROUNDS):
                    part = configs[turn::SCREEN_ROUNDS]
                    for name, (executor, batch, _) in setups.items():
                        remote.batch, calls = batch, remote.calls
                        wall, work = timed_screening(executor, part, examples)
                        called = remote.calls - calls if executor is remote else len(part)
                        for key, value in (("wall", wall), ("work", work), ("calls", called)):
                            totals[name][key] += value
            finally:
                remote.release()
    rows = {
        name: screening_row(name, t["wall"], t["work"], count, setups[name][2], int(t["calls"]))
        for name, t in totals.items()
    }
    return {
        "candidates": count,
        "examples": examples.stop,
        "fitness": session.spec.screening.fitness,
        "rounds": SCREEN_ROUNDS,
        "load_average": load,
        "cpus": os.cpu_count(),
        "setups": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts", nargs="+", choices=("trials", "screening"), default=["trials", "screening"]
    )
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=48, help="screened per setup")
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
        args.trials, args.retrain_steps, args.candidates = 2, 2, SCREEN_ROUNDS
        args.prepared = str(Path(args.out) / "prepared")
    if args.candidates < SCREEN_ROUNDS:
        parser.error(f"--candidates: at least {SCREEN_ROUNDS} (one per round)")
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
    directory = results_dir(args.smoke, Path(args.out))
    previous = directory / "ray_throughput.json"
    report: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    report["command"] = "python benchmarks/ray_throughput.py"
    if "trials" in args.parts:
        rows = {
            name: measure(name, {**common, **extra}, Path(args.out), Path(args.prepared))
            for name, extra in SETUPS.items()
        }
        report.update(
            trials=args.trials,
            retrain_steps=args.retrain_steps,
            setups=rows,
            ray_overhead_per_trial_s=rows["ray, 1 at a time"]["wall_per_trial_s"]
            - rows["local, 1 thread"]["wall_per_trial_s"],
        )
    if "screening" in args.parts:
        report["screening"] = screening(
            Path(args.out), Path(args.prepared), common, args.candidates
        )
    lines = trial_lines(report) + screening_lines(report)
    write_results("ray_throughput", report, lines, directory)
    print("\n".join(lines))


def trial_lines(report: dict[str, Any]) -> list[str]:
    if "setups" not in report:
        return []
    lines = [
        f"MiniLM on SST-2, {report['trials']} identical trials per setup "
        f"({report['retrain_steps']} retraining steps each), on this 2-core machine, one run: "
        f"`{report['command']}`.",
        "",
        "| setup | trials/hour | wall s per trial | trial work s (mean) | overhead s per trial |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["setups"].items():
        lines.append(
            f"| {name} | {row['trials_per_hour']:.0f} | {row['wall_per_trial_s']:.1f} "
            f"| {row['mean_trial_work_s']:.1f} | {row['overhead_per_trial_s']:.1f} |"
        )
    return lines + [
        "",
        f"Ray against local, both one trial at a time on 1 CPU: "
        f"{report['ray_overhead_per_trial_s']:+.1f} s of wall time per trial.",
    ]


def screening_lines(report: dict[str, Any]) -> list[str]:
    if "screening" not in report:
        return []
    part = report["screening"]
    lines = [
        "",
        f"Screening: {part['candidates']} candidates at {SCREEN_TARGET:g} of the prunable "
        f"parameters, each scored ({part['fitness']}) on {part['examples']} examples, after "
        f"the workers started, the setups taking turns over {part['rounds']} rounds, with a "
        f"load average of {part['load_average']:.1f} on the machine's {part['cpus']} cores "
        "at the start: `python benchmarks/ray_throughput.py --parts screening`.",
        "",
        "| setup | candidates/s | work s per candidate | calls | overhead s per call "
        "| overhead / work |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in part["setups"].items():
        lines.append(
            f"| {name} | {row['candidates_per_s']:.2f} | {row['work_per_candidate_s']:.3f} "
            f"| {row['calls']} | {row['overhead_per_call_s']:.3f} "
            f"| {100 * row['overhead_fraction']:.1f}% |"
        )
    return lines


if __name__ == "__main__":
    main()
