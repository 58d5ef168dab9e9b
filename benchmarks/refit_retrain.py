"""Refit before retraining: does starting distillation from the least-squares refit help?

MiniLM on SST-2 (``studies/bench_sst2.yaml``, the fidelity study's prepared work), at each
``--targets`` size of the prunable parameters: the uniform and the global-importance
allocations, each retrained with the study's recipe (100 distillation steps) from the model
as pruned and from the model refit to the dense block outputs on the first
``--recovery`` retraining examples (``retrain.recovery_examples``, Kwon et al. 2022's
least-squares rescaling with FLAP's bias compensation), under ``--seeds`` retraining seeds.
Reported: search accuracy before retraining and test accuracy after, per allocation,
start and seed. Writes ``benchmarks/results/refit_retrain.{json,md}``.
Run: ``python benchmarks/refit_retrain.py`` (about 10 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from common import (
    REPO,
    RUNS,
    SMOKE_OVERRIDES,
    add_smoke_flag,
    results_dir,
    run_dir_sharing,
    write_results,
)

from autoprune.run.trial import run_trial
from autoprune.search.budget import BudgetSpace
from autoprune.workflow import opened_run

STUDY = REPO / "studies" / "bench_sst2.yaml"
STARTS = ("as pruned", "refit")

log = logging.getLogger("autoprune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.25", help="sizes, comma-separated")
    parser.add_argument("--seeds", type=int, default=2, help="retraining seeds")
    parser.add_argument("--recovery", type=int, default=128, help="examples the refit uses")
    parser.add_argument("--steps", type=int, default=100, help="retraining steps")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(RUNS / "refit_retrain"))
    parser.add_argument("--prepared", default=str(RUNS / "sst2" / "prepared"))
    add_smoke_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {"baseline.ratios": [], "retrain.steps": args.steps}
    if args.smoke:
        overrides.update(SMOKE_OVERRIDES)
        args.recovery, args.seeds = 16, 1
        args.prepared = str(Path(args.out) / "prepared")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    out = run_dir_sharing(Path(args.out) / "run", Path(args.prepared))
    rows: list[dict[str, Any]] = []
    with opened_run(STUDY, out, overrides) as session:
        prepared, settings = session.prepared, session.settings
        space = BudgetSpace(session.sizes, "prunable")
        planned = [float(t) for t in args.targets.split(",")]
        total = len(planned) * 2 * len(STARTS) * args.seeds
        for target in planned:
            allocations = {
                "uniform": space.at(target),
                "global": space.global_allocation(prepared.scores, target),
            }
            for name, allocation in allocations.items():
                config = space.to_config(allocation)
                for start in STARTS:
                    recovery = args.recovery if start == "refit" else 0
                    for seed in range(args.seeds):
                        retrain = settings.retrain.model_copy(
                            update={"seed": seed, "recovery_examples": recovery}
                        )
                        outcome, _ = run_trial(
                            prepared, config, dataclasses.replace(settings, retrain=retrain)
                        )
                        rows.append(
                            {
                                "target": target,
                                "allocation": name,
                                "start": start,
                                "seed": seed,
                                "search_before": outcome.metric_search_before,
                                "search": outcome.metric_search,
                                "test": outcome.metric_test,
                                "seconds": outcome.seconds["total"],
                            }
                        )
                        log.info("refit_retrain: %d/%d trials", len(rows), total)
    report = {
        "command": "python benchmarks/refit_retrain.py",
        "retrain_steps": args.steps,
        "recovery_examples": args.recovery,
        "seeds": args.seeds,
        "dense_test": prepared.dense.metric_test,
        "rows": rows,
        "minutes": (time.perf_counter() - started) / 60,
    }
    results = results_dir(args.smoke, Path(args.out))
    write_results("refit_retrain", report, markdown(report), results)


def markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        f"`{report['command']}`: MiniLM on SST-2 (dense {report['dense_test']:.4f} test), "
        f"retrained {report['retrain_steps']} steps from the model as pruned or refit on "
        f"{report['recovery_examples']} examples; {report['seeds']} seed(s); "
        f"{report['minutes']:.0f} minutes.",
        "",
        "| target | allocation | start | search before retraining | test after (per seed) | "
        "test mean |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[float, str, str], list[dict[str, Any]]] = {}
    for row in report["rows"]:
        groups.setdefault((row["target"], row["allocation"], row["start"]), []).append(row)
    for (target, allocation, start), rows in groups.items():
        tests = [row["test"] for row in rows]
        lines.append(
            f"| {target} | {allocation} | {start} | {rows[0]['search_before']:.4f} | "
            + ", ".join(f"{t:.4f}" for t in tests)
            + f" | {statistics.mean(tests):.4f} |"
        )
    return lines


if __name__ == "__main__":
    main()
