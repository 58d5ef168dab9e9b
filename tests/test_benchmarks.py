"""Every benchmark's ``--smoke`` mode runs end to end on the real MiniLM and SST-2 data (the
decoder benchmark on a tiny random Llama it builds) and writes its results where a smoke run
should (never into ``benchmarks/results``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BENCHMARKS = REPO / "benchmarks"

CASES = {
    "latency": ([], "latency"),
    "early_stopping": ([], "early_stopping"),
    "fidelity": ([], "fidelity"),
    "refit_retrain": ([], "refit_retrain"),
    "ray_throughput": ([], "ray_throughput"),
    "search_quality": (["--tasks", "sst2", "--seeds", "1", "--targets", "0.25"], "search_quality"),
    "llm": ([], "llm"),  # builds its own tiny random Llama
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_smoke_run_writes_its_results(
    script: str, tmp_path: Path, data_dir: Path, minilm_path: str
) -> None:
    extra, name = CASES[script]
    env = {
        **os.environ,
        "AUTOPRUNE_DATA_DIR": str(data_dir),
        "RAY_AUTH_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
    }
    before = {p: p.stat().st_mtime for p in (BENCHMARKS / "results").glob("*")}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), "--smoke", "--out", str(tmp_path)]
        + extra,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    assert report and (tmp_path / "results" / f"{name}.md").is_file()
    for entry in report.get("comparisons", []):  # a list that scripts check figures from
        assert set(entry) >= {"task", "target", "mode", "searched_mean", "baselines"}
        assert set(entry["baselines"]) == {"uniform", "layer-uniform", "global"}
        low, high = entry["ci95"]
        assert low <= entry["diff"] <= high and 0.0 <= entry["searched_mean"] <= 1.0
    if script == "llm":  # one figure per row, as a script checks them
        assert report["rows"]
        for row in report["rows"]:
            assert set(row) >= {"setting", "level", "method", "retrained", "perplexity"}
            timed = row["setting"] == "structured" and not row["retrained"]
            assert row["perplexity"] > 1 and ("tokens_per_s" in row) == timed
        distilled = {(r["setting"], r["method"]) for r in report["rows"] if r["retrained"]}
        assert distilled == {
            ("depth", "block-influence"),
            ("depth", "searched"),
            ("structured", "uniform"),
            ("structured", "global"),
            ("structured", "searched"),
        }
    assert {p: p.stat().st_mtime for p in (BENCHMARKS / "results").glob("*")} == before
