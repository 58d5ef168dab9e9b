"""A metric that goes down (perplexity, say): fronts, hypervolume, the best point, the
ledger's fronts and early stopping follow the task's direction, not an assumption that
higher is better."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import tiny_study

from autoprune.engine.measure import Size
from autoprune.engine.prune import PruneConfig
from autoprune.reports.results import COLUMNS, Run
from autoprune.run.ledger import Ledger
from autoprune.run.prepare import DenseRecord
from autoprune.run.rundir import RunDir
from autoprune.run.trial import TrialOutcome
from autoprune.search.spec import EarlyStoppingSpec, load_study
from autoprune.tasks.base import Task

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
        direction="minimize",
        reference=100.0,
    )


def test_front_hypervolume_and_best_point_when_lower_is_better(tmp_path: Path) -> None:
    run = lower_is_better_run(tmp_path)
    assert sorted(run.front()["trial"]) == [0, 1]  # 15 at 0.6 is beaten by 10 at 0.5
    # Area between the front and (metric 100, size 1): (100-20)*(0.5-0.3) + (100-10)*(1-0.5).
    assert run.hypervolume("search", "search") == pytest.approx(80 * 0.2 + 90 * 0.5)
    assert run.hypervolume("search", "test") == pytest.approx(79 * 0.2 + 89 * 0.5)
    assert int(run.best_under(0.55)["trial"]) == 0


class LowerIsBetter(Task):
    """A test double: only the metric's direction matters to the ledger."""

    kind = "lower-is-better"
    metric = "perplexity"
    direction = "minimize"
    teacher = "online"

    def load_model(self, source, seed):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def loss(self, model, batch, reduction="mean"):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def distillation_loss(self, model, batch, teacher, temperature, weight):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def teacher_targets(self, model, batch):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def divergence(self, model, batch, teacher):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def example_outputs(self, model, data):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def metric_of(self, outputs, data):  # noqa: ANN001, ANN201
        raise NotImplementedError

    @property
    def reference(self) -> float:
        return 100.0


def outcome(metric: float, size: float) -> TrialOutcome:
    return TrialOutcome(
        config=PruneConfig(heads=[1], ffn=[1]),
        ratios={"prunable": size},
        size={},
        metric_search_before=metric,
        metric_search=metric,
        metric_test=metric,
        retrain_steps=0,
        seconds={"total": 0.0},
    )


def test_the_ledger_keeps_fronts_and_stops_trials_by_the_tasks_direction(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    stopping = EarlyStoppingSpec(rungs=[1], keep=0.5, min_trials=2)
    ledger = Ledger(
        study,
        task=LowerIsBetter(),
        size_unit="prunable",
        run=RunDir(tmp_path),
        early_stopping=stopping,
    )
    for metric, size in POINTS:
        ledger.record_outcome(study.ask().number, outcome(metric, size), "search")
    assert sorted(t.number for t in ledger.front("search")) == [0, 1]
    first, second = study.ask().number, study.ask().number
    assert ledger.rung_decision(first, 1, 30.0, 0.5)  # alone at the rung: goes on
    assert not ledger.rung_decision(second, 1, 40.0, 0.5)  # worse at the same size: stops
    assert ledger.rung_decision(study.ask().number, 1, 20.0, 0.5)  # better: goes on
