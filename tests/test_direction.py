"""A metric that goes down (perplexity, say): fronts, hypervolume, the best point and early
stopping follow the task's direction, not an assumption that higher is better."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_study

from autoprune.engine.measure import Size
from autoprune.reports.results import COLUMNS, Run
from autoprune.run.prepare import DenseRecord
from autoprune.search.spec import load_study

POINTS = [(10.0, 0.5), (20.0, 0.3), (15.0, 0.6)]  # (metric: lower is better, size)


def lower_is_better_run(tmp_path: Path) -> Run:
    rows = [
        {c: None for c in COLUMNS}
        | {"study": "search", "trial": i, "kind": "search", "status": "complete"}
        | {"metric_search": m, "metric_test": m + 1, "size": s}
        for i, (m, s) in enumerate(POINTS)
    ]
    size = Size(params=1, prunable=1, nonzero=1, nonzero_total=1, bytes=1, macs=1, seq_len=1)
    return Run(
        path=tmp_path,
        spec=load_study(tiny_study(tmp_path)),
        trials=pd.DataFrame(rows, columns=COLUMNS),
        dense=DenseRecord(9.0, 10.0, size),
        metric="perplexity",
        higher_is_better=False,
        reference=100.0,
    )


def test_front_hypervolume_and_best_point_when_lower_is_better(tmp_path: Path) -> None:
    run = lower_is_better_run(tmp_path)
    assert sorted(run.front()["trial"]) == [0, 1]  # 15 at 0.6 is beaten by 10 at 0.5
    # Area between the front and (metric 100, size 1): (100-20)*(0.5-0.3) + (100-10)*(1-0.5).
    assert run.hypervolume("search", "search") == pytest.approx(80 * 0.2 + 90 * 0.5)
    assert run.hypervolume("search", "test") == pytest.approx(79 * 0.2 + 89 * 0.5)
    assert int(run.best_under(0.55)["trial"]) == 0
