"""Fidelity study: do cheap, retrain-free scores rank pruned allocations as retraining does?

MiniLM on SST-2 (``studies/bench_sst2.yaml``) at one target size (``--target``, a ratio of the
prunable parameters). Allocations of exactly that size: the uniform one, the
global-importance one, and more drawn two ways (half decoded from random weights, half the
global allocation with a few to many levels switched between layers). Each is scored
retrain-free by every screening fitness (``kl``, ``hidden``, ``loss`` on calibration examples
of the training pool; ``metric``, the search-split accuracy, negated), then retrained with the
study's recipe (distillation from the dense model) once per retraining seed, its search-split
accuracy measured at several steps and its test accuracy at the end. ``kl`` is also measured
after a least-squares refit of the kept units on calibration examples (``kl, recovered``:
:func:`autoprune.engine.recovery.recover`).

Reported: the Spearman rank correlation, over the allocations, of each screening fitness
(lower is better) with the negated final test accuracy (the mean over seeds), so a high
correlation means the cheap score ranks as retraining does; of the search accuracy at each
retraining step with the final test accuracy (where rankings settle); and, with two or more
seeds, of one seed's final test ranking with another's (the noise ceiling: no cheap score
can be expected to rank better than retraining agrees with itself). Writes
``benchmarks/results/fidelity.{json,md}``. Run: ``python benchmarks/fidelity.py`` (about an
hour on 2 CPU cores with the defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
from common import (
    REPO,
    RUNS,
    SMOKE_OVERRIDES,
    add_smoke_flag,
    results_dir,
    run_dir_sharing,
    write_results,
)
from scipy.stats import spearmanr

from autoprune.run.screen import Screener
from autoprune.run.trial import TrialOutcome, run_trial
from autoprune.search.budget import Allocation, BudgetSpace
from autoprune.search.spec import Fitness
from autoprune.workflow import opened_run

STUDY = REPO / "studies" / "bench_sst2.yaml"
FITNESSES: tuple[Fitness, ...] = ("kl", "hidden", "loss", "fisher", "metric")
RECOVERED = "kl, recovered"

log = logging.getLogger("autoprune")


def allocations(space: BudgetSpace, scores: Any, target: float, count: int, seed: int) -> dict:
    """``count`` distinct allocations of size ``target``: uniform, global, random, mutated."""
    rng = random.Random(seed)
    found = {"uniform": space.at(target), "global": space.global_allocation(scores, target)}
    attempts = 0
    while len(found) < count and attempts < 50 * count:
        attempts += 1
        if len(found) % 2 == 0:
            weights = [rng.random() for _ in space.slots]
            candidate = space.decode(weights, target)
        else:
            candidate = space.mutate(found["global"], target, rng, swaps=rng.choice((2, 6, 20)))
        if candidate not in found.values():
            found[f"draw-{len(found) - 1}"] = candidate
    return found


def rank_correlation(cheap: list[float], final: list[float]) -> float:
    """Spearman's rho of two score lists (both: lower is better)."""
    rho = spearmanr(cheap, final).statistic
    return float(rho)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--allocations", type=int, default=12)
    parser.add_argument("--calibration", type=int, default=256, help="pool examples scored")
    parser.add_argument("--steps", type=int, default=150, help="retraining steps")
    parser.add_argument("--checks", default="10,30,60,100", help="steps where search is measured")
    parser.add_argument("--seed", type=int, default=0, help="of the drawn allocations")
    parser.add_argument("--seeds", type=int, default=2, help="retraining seeds per allocation")
    parser.add_argument(
        "--recovery", type=int, default=128, help="pool examples the refit of kl, recovered uses"
    )
    parser.add_argument("--out", default=str(RUNS / "fidelity"))
    parser.add_argument("--prepared", default=str(RUNS / "sst2" / "prepared"))
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.allocations, args.calibration, args.steps, args.checks = 4, 16, 4, "2"
        args.recovery = 16
        args.prepared = str(Path(args.out) / "prepared")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    checks = tuple(int(c) for c in args.checks.split(","))
    overrides: dict[str, Any] = {"baseline.ratios": [], **(SMOKE_OVERRIDES if args.smoke else {})}
    overrides["retrain.steps"] = args.steps
    out = run_dir_sharing(Path(args.out) / "run", Path(args.prepared))
    started = time.perf_counter()
    with opened_run(STUDY, out, overrides) as session:
        prepared = session.prepared
        space = BudgetSpace(session.sizes, "prunable")
        chosen = allocations(space, prepared.scores, args.target, args.allocations, args.seed)
        settings = dataclasses.replace(session.settings, rungs=checks)
        screeners: dict[str, Screener] = {k: Screener(prepared, fitness=k) for k in FITNESSES}
        screeners[RECOVERED] = Screener(prepared, fitness="kl", recovery_examples=args.recovery)
        rows: list[dict[str, Any]] = []
        for name, allocation in chosen.items():
            rows.append(measure_one(name, allocation, space, screeners, settings, args))
            log.info("fidelity: %d/%d allocations measured", len(rows), len(chosen))
    final = [-row["test"] for row in rows]
    seeds = range(args.seeds)
    report: dict[str, Any] = {
        "command": "python benchmarks/fidelity.py",
        "target": args.target,
        "retrain_steps": args.steps,
        "calibration_examples": args.calibration,
        "recovery_examples": args.recovery,
        "seeds": args.seeds,
        "rows": rows,
        "spearman_screening": {
            kind: rank_correlation([row["screen"][kind] for row in rows], final)
            for kind in screeners
        },
        "spearman_steps": {
            str(step): rank_correlation(
                [-statistics.mean(row["search_at"][s][str(step)] for s in seeds) for row in rows],
                final,
            )
            for step in dict.fromkeys((*checks, args.steps))  # the last: what a choice reads
        },
        "spearman_between_seeds": [
            rank_correlation([-row["tests"][a] for row in rows], [-row["tests"][b] for row in rows])
            for a in seeds
            for b in seeds
            if a < b
        ],
        "minutes": (time.perf_counter() - started) / 60,
    }
    write_results("fidelity", report, markdown(report), results_dir(args.smoke, Path(args.out)))


def measure_one(
    name: str,
    allocation: Allocation,
    space: BudgetSpace,
    screeners: dict[str, Screener],
    settings: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Screen one allocation with every fitness, then retrain it once per seed and measure
    it; ``test`` is the mean test accuracy over seeds."""
    config = space.to_config(allocation)
    screened = {}
    for kind, screener in screeners.items():
        examples = slice(0, min(args.calibration, screener.examples))
        screened[kind] = screener.score(screener.candidate(config), examples, config)
    search_at: list[dict[str, float]] = []
    tests, seconds = [], 0.0
    prepared = screeners["kl"].prepared
    for seed in range(args.seeds):
        at_steps: dict[str, float] = {}

        def at_rung(step: int, outcome: TrialOutcome, at_steps: dict = at_steps) -> bool:
            at_steps[str(step)] = outcome.metric_search
            return True

        seeded = dataclasses.replace(
            settings, retrain=settings.retrain.model_copy(update={"seed": seed})
        )
        outcome, _ = run_trial(prepared, config, seeded, at_rung)
        at_steps[str(outcome.retrain_steps)] = outcome.metric_search
        search_at.append(at_steps)
        tests.append(outcome.metric_test)
        seconds += outcome.seconds["total"]
    return {
        "allocation": name,
        "heads": list(allocation.heads),
        "ffn": list(allocation.neurons),
        "size": space.size(allocation),
        "screen": screened,
        "search_before": outcome.metric_search_before,
        "search_at": search_at,
        "tests": tests,
        "test": statistics.mean(tests),
        "seconds": seconds,
    }


def markdown(report: dict[str, Any]) -> list[str]:
    rows = report["rows"]
    tests = [row["test"] for row in rows]
    lines = [
        f"MiniLM on SST-2, {len(rows)} allocations of size {report['target']} (prunable), "
        f"each screened on {report['calibration_examples']} calibration examples and "
        f"retrained {report['retrain_steps']} steps with {report['seeds']} seed(s); "
        f"`{report['command']}` ({report['minutes']:.0f} minutes). Test accuracy after "
        f"retraining (mean over seeds): {min(tests):.4f} to {max(tests):.4f} (median "
        f"{statistics.median(tests):.4f}).",
        "",
        "| cheap score | Spearman with the final test ranking |",
        "|---|---|",
    ]
    for kind, rho in report["spearman_screening"].items():
        lines.append(f"| screening `{kind}` | {rho:+.2f} |")
    for step, rho in report["spearman_steps"].items():
        lines.append(f"| search accuracy after {step} retraining steps | {rho:+.2f} |")
    for rho in report["spearman_between_seeds"]:
        lines.append(f"| one seed's final test ranking against another's | {rho:+.2f} |")
    lines += [
        "",
        "| allocation | heads | ffn | kl | kl, recovered | search before | test per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['allocation']} | {'-'.join(map(str, row['heads']))} | "
            f"{'-'.join(map(str, row['ffn']))} | {row['screen']['kl']:.4f} | "
            f"{row['screen'][RECOVERED]:.4f} | {row['search_before']:.4f} | "
            f"{', '.join(f'{t:.4f}' for t in row['tests'])} |"
        )
    return lines


if __name__ == "__main__":
    main()
