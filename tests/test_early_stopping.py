"""Multi-objective successive halving: its ranking, its rule, and a synthetic study."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import new_run_with_prepared, search_study

from autoprune import describe
from autoprune.reports.results import load_run
from autoprune.run.ledger import count_spent
from autoprune.search.early_stopping import (
    crowding_distances,
    nondominated_ranks,
    preference_order,
    should_continue,
)
from autoprune.workflow import run_search


def test_ranks_and_crowding() -> None:
    points = [(0.9, 0.5), (0.8, 0.3), (0.7, 0.6), (0.85, 0.4), (0.6, 0.7)]
    assert nondominated_ranks(points) == [0, 0, 1, 0, 2]
    crowding = crowding_distances(points, [0, 1, 3])
    assert crowding[0] == math.inf and crowding[1] == math.inf
    assert crowding[3] == pytest.approx((0.9 - 0.8) / 0.1 + (0.5 - 0.3) / 0.2)
    assert preference_order(points)[-1] == 4


def test_rule() -> None:
    earlier = [(0.80, 0.5), (0.70, 0.3), (0.75, 0.6)]
    assert should_continue([], (0.1, 0.9), keep=0.5, min_trials=2)  # too few to decide
    assert should_continue(earlier, (0.85, 0.2), keep=0.5, min_trials=2)  # dominates all
    assert not should_continue(earlier, (0.60, 0.7), keep=0.5, min_trials=2)  # dominated
    # Non-dominated at a small size: kept for the front's spread, not only the best metric.
    assert should_continue(earlier, (0.65, 0.1), keep=0.5, min_trials=2)


def test_synthetic_study_records_stopped_trials_and_keeps_them_off_the_front(
    study_file: Path, run_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """A metric that grows with the heads kept: no trial dominates another, so at a rung of
    two trials the later one is the one that stops (ties go to the earlier trial)."""
    from autoprune.tasks import Classification

    def synthetic(self, model, data):  # noqa: ARG001 -- the task's metric is replaced
        return 0.5 + 0.4 * sum(describe(model).heads) / 72

    monkeypatch.setattr(Classification, "evaluate", synthetic)
    out = new_run_with_prepared(run_dir, tmp_path)
    run_search(
        study_file,
        out,
        {
            "budget.trials": 5,
            "retrain.steps": 2,
            "early_stopping": {"rungs": [1], "keep": 0.5, "min_trials": 2},
            "baseline.ratios": [],
            "objectives.min_size": None,
            "objectives.max_size": None,
        },
    )
    study = search_study(out)
    assert count_spent(study) == 5
    run = load_run(out)
    stopped = run.trials[run.trials["status"] == "stopped"]
    assert len(stopped) >= 1
    for trial in study.trials:
        if trial.user_attrs.get("status") == "stopped":
            assert trial.state.name == "PRUNED" and trial.values is None
            assert trial.user_attrs["metric_test"] is None
            assert trial.user_attrs["stopped_at"] == 1
            assert "1" in trial.user_attrs["rung_points"]
    front = run.front("search")
    assert set(front["status"]) == {"complete"}
    assert not set(front["trial"]) & set(stopped["trial"])
