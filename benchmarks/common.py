"""What the benchmark scripts share: run directories over shared prepared work, results,
and the ``--smoke`` mode (tiny settings that check a script end to end in seconds)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RUNS = REPO / "benchmarks" / "runs"

# Study overrides of a smoke run: a few examples, a few steps. Never reported as results.
SMOKE_OVERRIDES: dict[str, Any] = {
    "data.search_samples": 64,
    "data.train_samples": 256,
    "data.test_samples": 64,
    "finetune.steps": 4,
    "importance.samples": 32,
    "retrain.steps": 2,
}


def add_smoke_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny settings, to check the script; results go to OUT/results, not "
        "benchmarks/results",
    )


def results_dir(smoke: bool, out: Path) -> Path:
    """``benchmarks/results`` for a real run; ``out/results`` for a smoke run."""
    return out / "results" if smoke else RESULTS


def run_dir_sharing(out: Path, prepared: Path) -> Path:
    """``out`` as a run directory whose prepared work is the shared folder ``prepared``
    (computed by the first run that needs it, read by the others)."""
    out.mkdir(parents=True, exist_ok=True)
    prepared.mkdir(parents=True, exist_ok=True)
    link = out / "prepared"
    if not link.exists():
        link.symlink_to(prepared.resolve(), target_is_directory=True)
    return out


def write_results(
    name: str, report: dict[str, Any], markdown: list[str], directory: Path = RESULTS
) -> None:
    """``<directory>/<name>.json`` (every number) and ``<name>.md`` (the summary)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (directory / f"{name}.md").write_text("\n".join(markdown) + "\n")
