"""Reading a run: every trial as a DataFrame, the Pareto fronts, hypervolumes, tables.

Fronts are chosen on the ``search`` split, the one the controller saw; the ``test`` values
of the chosen trials stand beside them. That is what a user should read as the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from autoprune.engine.measure import SizeUnit
from autoprune.engine.prune import PruneConfig
from autoprune.run.ledger import KIND, KINDS, ORIGINS, TARGET, Kind, checkpoint_error, status_of
from autoprune.run.prepare import DenseRecord
from autoprune.run.rundir import BASELINE, SEARCH, RunDir, screening_study_name, study_name
from autoprune.run.trial import SIZE_UNITS
from autoprune.search.pareto import hypervolume, nondominated
from autoprune.search.spec import StudyError, StudySpec
from autoprune.tasks.base import Direction, oriented

Split = Literal["search", "test"]
TableFormat = Literal["table", "csv", "json"]


@dataclass
class Run:
    """A run directory, read.

    Attributes:
        path: The run directory.
        spec: Its resolved study.
        trials: One row per trial of the search and the baseline studies.
        dense: The dense model's metrics and size.
        metric: The task's metric.
        direction: ``maximize`` when the metric goes up (accuracy), ``minimize`` when it goes
            down (perplexity).
        reference: The hypervolume's reference metric (chance level, or a stated cap).
        test_outputs: Each complete trial's per-example outputs on the test split, by
            ``(study, trial)`` (what paired comparisons read: :mod:`autoprune.reports.compare`).
        search_outputs: The same on the search split, where the trial recorded them (what a
            targeted search's choice compares).
    """

    path: Path
    spec: StudySpec
    trials: pd.DataFrame
    dense: DenseRecord
    metric: str
    direction: Direction
    reference: float
    test_outputs: dict[tuple[str, int], list[Any]] = field(default_factory=dict)
    search_outputs: dict[tuple[str, int], list[Any]] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "maximize"

    def _score(self, metric: pd.Series) -> list[float]:
        """Metrics oriented so that higher is better, as fronts compare them."""
        return [oriented(m, self.direction) for m in metric]

    @property
    def size_unit(self) -> SizeUnit:
        return self.spec.objectives.size

    def complete(self, kind: Kind = "search") -> pd.DataFrame:
        """Complete trials of ``kind`` (``search`` or a baseline's kind)."""
        rows = self.trials[(self.trials["kind"] == kind) & (self.trials["status"] == "complete")]
        return rows.copy()

    def front(self, kind: Kind = "search") -> pd.DataFrame:
        """The Pareto front of ``kind``'s complete trials on (search metric, size), by size."""
        rows = self.complete(kind)
        if rows.empty:
            return rows
        points = list(zip(self._score(rows["metric_search"]), rows["size"], strict=True))
        return rows[nondominated(points)].sort_values(["size", "metric_search"])

    def hypervolume(self, kind: Kind = "search", split: Split = "search") -> float:
        """Hypervolume of ``kind``'s front (chosen on search) with its ``split`` metrics,
        against the reference (the task's reference metric, size 1.0)."""
        front = self.front(kind)
        points = list(zip(self._score(front[f"metric_{split}"]), front["size"], strict=True))
        return hypervolume(points, (oriented(self.reference, self.direction), 1.0))

    def best_under(self, max_size: float, kind: Kind = "search") -> pd.Series | None:
        """The front trial with the best search metric at size <= ``max_size``."""
        front = self.front(kind)
        fitting = front[front["size"] <= max_size]
        if fitting.empty:
            return None
        ordered = fitting.sort_values("metric_search", ascending=self.higher_is_better)
        return ordered.iloc[-1]

    def best_at(self, target: float, kind: Kind = "search") -> pd.Series | None:
        """The complete trial of ``kind`` built for ``target`` (a targeted search's finalist,
        or a baseline at that target) with the best search metric; None if there is none.
        A targeted search's choice starts from it (:func:`autoprune.reports.compare.choose`)."""
        rows = self.complete(kind)
        rows = rows[rows["target"] == target]
        if rows.empty:
            return None
        ordered = rows.sort_values("metric_search", ascending=self.higher_is_better)
        return ordered.iloc[-1]


COLUMNS = [
    "study",
    "trial",
    "kind",
    "target",
    "origins",
    "status",
    "stage",
    "fidelity",
    "metric_search",
    "metric_test",
    "metric_search_before",
    "size",
    *(f"ratio_{unit}" for unit in SIZE_UNITS),
    "params",
    "macs",
    "heads",
    "ffn",
    "sparsity",
    "kv_heads",
    "layers",
    "retrain_steps",
    "seconds",
    "failure",
    "checkpoint_error",
]


CONFIG_COLUMNS = ("heads", "ffn", "sparsity", "kv_heads", "layers")
"""The columns of :attr:`Run.trials` that hold a trial's PruneConfig (a list each, or None)."""


def config_of(row: pd.Series | dict[str, Any], source: str = "trial") -> PruneConfig:
    """The PruneConfig of a row of :attr:`Run.trials`; ``source`` names the row in errors.

    Raises:
        PruneConfigError: If the row's configuration is incomplete or inconsistent.
    """
    recorded = {key: list(row[key]) for key in CONFIG_COLUMNS if isinstance(row[key], list)}
    return PruneConfig.from_dict(recorded, source)


def _rows(study: optuna.Study, which: str, size_unit: SizeUnit) -> list[dict[str, Any]]:
    """One row per trial of ``study`` (``which`` is ``search`` or ``baseline``)."""
    rows = []
    study_attrs = study.user_attrs
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        config = attrs.get("config") or {}
        rows.append(
            {
                "study": which,
                "trial": trial.number,
                "kind": attrs.get(KIND, "search" if which == SEARCH else "uniform"),
                "target": attrs.get(TARGET),
                "origins": attrs.get(ORIGINS),
                "status": status_of(trial)
                or ("running" if trial.state == TrialState.RUNNING else trial.state.name.lower()),
                "stage": attrs.get("stage"),
                "fidelity": attrs.get("fidelity"),
                "metric_search": attrs.get("metric_search"),
                "metric_test": attrs.get("metric_test"),
                "metric_search_before": attrs.get("metric_search_before"),
                "size": attrs.get(f"ratio_{size_unit}"),
                **{f"ratio_{unit}": attrs.get(f"ratio_{unit}") for unit in SIZE_UNITS},
                "params": (attrs.get("size") or {}).get("params"),
                "macs": (attrs.get("size") or {}).get("macs"),
                "heads": config.get("heads"),
                "ffn": config.get("ffn"),
                "sparsity": config.get("sparsity"),
                "kv_heads": config.get("kv_heads"),
                "layers": config.get("layers"),
                "retrain_steps": attrs.get("retrain_steps"),
                "seconds": (attrs.get("seconds") or {}).get("total"),
                "failure": attrs.get("failure"),
                "checkpoint_error": checkpoint_error(study_attrs, trial.number),
            }
        )
    return rows


def load_run(path: str | Path) -> Run:
    """Read a run directory: its study, every trial of it, the dense model's record."""
    run = RunDir(Path(path))
    spec = run.load_spec()
    storage = run.open_storage(spec, create=False)
    search = optuna.load_study(study_name=study_name(spec, SEARCH), storage=storage)
    baseline = optuna.load_study(study_name=study_name(spec, BASELINE), storage=storage)
    if "dense" not in search.user_attrs:
        raise StudyError(f"{run.path}: the search has not prepared its dense model yet")
    rows = _rows(search, SEARCH, spec.objectives.size) + _rows(
        baseline, BASELINE, spec.objectives.size
    )
    trials = pd.DataFrame(rows, columns=COLUMNS)

    def outputs(split: Split) -> dict[tuple[str, int], list[Any]]:
        key = f"{split}_outputs"
        return {
            (which, trial.number): trial.user_attrs[key]
            for which, study in ((SEARCH, search), (BASELINE, baseline))
            for trial in study.get_trials(deepcopy=False)
            if trial.user_attrs.get(key) is not None
        }

    return Run(
        path=run.path,
        spec=spec,
        trials=trials,
        dense=DenseRecord.from_dict(search.user_attrs["dense"]),
        metric=str(search.user_attrs["metric"]),
        direction=search.user_attrs["direction"],
        reference=float(search.user_attrs["reference"]),
        test_outputs=outputs("test"),
        search_outputs=outputs("search"),
    )


def screened(run: Run, target: float) -> list[FrozenTrial]:
    """Every candidate a targeted search of ``run`` screened at ``target``, in the order
    screened (stage ``screen``: fitness, fidelity and configuration in the user attributes;
    complete where it survived its generation's selection, pruned where it did not).

    Raises:
        StudyError: If nothing was screened at ``target`` in ``run``.
    """
    storage = RunDir(run.path).open_storage(run.spec, create=False)
    name = study_name(run.spec, screening_study_name(target))
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise StudyError(
            f"{run.path}: nothing was screened at target {target}; the study's targets are "
            f"{run.spec.objectives.targets}"
        ) from None
    return study.get_trials(deepcopy=False)


def front_table(run: Run, kind: Kind = "search") -> pd.DataFrame:
    """The front as a table: size ratios, parameters, MACs, metrics on both splits, drops."""
    front = run.front(kind)
    table = pd.DataFrame(
        {
            "trial": front["trial"],
            f"size ({run.size_unit})": front["size"].round(3),
            "params (M)": (front["params"] / 1e6).round(2),
            "MACs (G)": (front["macs"] / 1e9).round(3),
            f"{run.metric} search": front["metric_search"].round(4),
            f"{run.metric} test": front["metric_test"].round(4),
            "test drop vs dense": (run.dense.metric_test - front["metric_test"]).round(4)
            * (1 if run.higher_is_better else -1),
            "stage": front["stage"],
            "fidelity": front["fidelity"],
            "heads": front["heads"].map(lambda h: "-".join(map(str, h))),
            "ffn": front["ffn"].map(lambda f: "-".join(map(str, f))),
        }
    )
    if front["target"].notna().any():  # baselines built for sizes
        table.insert(2, "target", front["target"])
    if "ratio_nonzero" in front and front["sparsity"].map(lambda s: any(s)).any():
        table["sparsity"] = front["sparsity"].map(lambda s: "-".join(f"{v:.2f}" for v in s))
    return table.reset_index(drop=True)


def summary(run: Run) -> dict[str, Any]:
    """Hypervolumes and best points of the search and of every baseline kind present."""
    result: dict = {
        "dense": {
            f"{run.metric}_search": run.dense.metric_search,
            f"{run.metric}_test": run.dense.metric_test,
        },
        "size_unit": run.size_unit,
        "reference": {"metric": run.reference, "size": 1.0},
    }
    for kind in KINDS:
        if run.complete(kind).empty:
            continue
        result[kind] = {
            "trials": len(run.complete(kind)),
            "front_points": len(run.front(kind)),
            "hypervolume_search": run.hypervolume(kind, "search"),
            "hypervolume_test": run.hypervolume(kind, "test"),
        }
    return result


def render(run: Run, fmt: TableFormat = "table", kind: Kind = "search") -> str:
    """The front of ``kind`` and the run's summary, as text, CSV or JSON."""
    table = front_table(run, kind)
    info = summary(run)
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return json.dumps({"front": table.to_dict(orient="records"), **info}, indent=2)
    lines = [
        f"run {run.path} ({run.spec.name}): {run.metric}, size = {run.size_unit} ratio to dense",
        f"dense: {run.metric} {run.dense.metric_search:.4f} search, "
        f"{run.dense.metric_test:.4f} test",
        f"{kind} front, chosen on the search split ({len(table)} points):",
        table.to_string(index=False) if not table.empty else "  (no complete trial yet)",
        "",
        f"hypervolume (reference: {run.metric} {run.reference:g}, size 1.0):",
    ]
    for name in KINDS:
        if name in info:
            entry = info[name]
            lines.append(
                f"  {name:14s} {entry['hypervolume_search']:.4f} on search, "
                f"{entry['hypervolume_test']:.4f} on test ({entry['trials']} trials)"
            )
    return "\n".join(lines)
