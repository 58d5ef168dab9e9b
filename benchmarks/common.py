"""What the benchmark scripts share: run directories over shared prepared work, results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RUNS = REPO / "benchmarks" / "runs"


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
    """``benchmarks/results/<name>.json`` (every number) and ``<name>.md`` (the summary)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (directory / f"{name}.md").write_text("\n".join(markdown) + "\n")
