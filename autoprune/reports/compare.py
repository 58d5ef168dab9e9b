"""Paired comparisons of pruned models on the test split.

Trials of one run (or of runs sharing their prepared work) were evaluated on the same test
examples; each recorded its per-example outputs. The difference of their metrics is
read with a paired bootstrap over those examples (Efron and Tibshirani 1993; Koehn 2004 for
its use on test sets): both models are scored on the same resamples, so the interval carries
the noise of the test set's sampling, not of the models' training. An interval that holds 0
says the test set cannot tell the two apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch

from autoprune.reports.results import Run
from autoprune.run.ledger import Kind
from autoprune.tasks import Task, make_task
from autoprune.tasks.data import Encoded, TaskData


@dataclass(frozen=True)
class Difference:
    """A model's test metric minus another's, with a paired bootstrap interval.

    Attributes:
        diff: The difference on the whole test split.
        low: The interval's lower end.
        high: Its upper end.
        level: Its confidence level (0.95 for a 95% interval).
    """

    diff: float
    low: float
    high: float
    level: float


def paired_bootstrap(
    task: Task,
    data: Encoded,
    a: Sequence[torch.Tensor],
    b: Sequence[torch.Tensor],
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Difference:
    """The mean test metric of the models ``a`` minus that of the models ``b`` on ``data``,
    and its percentile bootstrap interval at ``level`` over ``resamples`` resamples of the
    examples (the same rows for every model).

    Several models on a side are the same method run with different seeds: the difference
    of their means is resampled, so the interval is about the test set, the seeds' spread
    being in the means themselves.

    Args:
        task: The task whose :meth:`~autoprune.tasks.Task.metric_of` scores outputs.
        data: The examples every model was evaluated on.
        a: Each model's :meth:`~autoprune.tasks.Task.example_outputs` on ``data``.
        b: The same for the models compared against.

    Raises:
        ValueError: If a side is empty, outputs do not have one row per example, or
            ``resamples`` < 1.
    """
    if not a or not b:
        raise ValueError("each side needs the outputs of at least one model")
    rows_of = sorted({len(outputs) for outputs in (*a, *b)})
    if rows_of != [len(data)]:
        raise ValueError(
            f"outputs have {', '.join(map(str, rows_of))} rows, the test split has "
            f"{len(data)} examples"
        )
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")

    def mean_difference(rows: torch.Tensor | slice) -> float:
        sample = data.subset(rows)
        mean_a = sum(task.metric_of(outputs[rows], sample) for outputs in a) / len(a)
        return mean_a - sum(task.metric_of(outputs[rows], sample) for outputs in b) / len(b)

    generator = torch.Generator().manual_seed(seed)
    diffs = torch.tensor(
        [
            mean_difference(torch.randint(len(data), (len(data),), generator=generator))
            for _ in range(resamples)
        ],
        dtype=torch.float64,
    )
    tail = (1.0 - level) / 2
    bounds = torch.tensor([tail, 1.0 - tail], dtype=torch.float64)
    low, high = torch.quantile(diffs, bounds).tolist()
    return Difference(diff=mean_difference(slice(None)), low=low, high=high, level=level)


def held_out(run: Run) -> tuple[Task, Encoded]:
    """The run's task and its test split, read from its prepared work."""
    data = TaskData.load(run.path / "prepared" / "data")
    return make_task(run.spec.task, data, run.spec.task_settings()), data.test


def outputs_of(run: Run, row: pd.Series) -> torch.Tensor:
    """The per-example test outputs of the trial ``row`` of ``run.trials``.

    Raises:
        KeyError: If the trial recorded none (not complete, or stopped early).
    """
    key = (str(row["study"]), int(row["trial"]))
    if key not in run.test_outputs:
        raise KeyError(f"{run.path}: {key[0]} trial {key[1]} has no test outputs")
    return torch.tensor(run.test_outputs[key])


BASELINE_KINDS: tuple[Kind, ...] = ("uniform", "layer-uniform", "global")
METHODS = ("searched", *BASELINE_KINDS)
Setting = Literal["structured", "unstructured", "depth"]
SETTINGS: dict[Setting, tuple[Kind, ...]] = {
    "structured": BASELINE_KINDS,  # targets are sizes
    "unstructured": ("uniform-sparsity", "owl"),  # targets are sparsities
    "depth": ("block-influence",),  # targets are fractions of the layers removed
}
"""Each setting's baseline kinds; what the targets of its trials are, in the comments."""


def at_target(run: Run, target: float) -> dict[str, pd.Series]:
    """What each method gives at ``target``, where the run has it: ``searched``, the targeted
    search's choice (its finalist with the best search metric); ``uniform`` and ``global``,
    the baseline of that kind trained for ``target``, else the search's finalist built from
    that allocation; ``layer-uniform``, the baseline trained for ``target``."""
    found = {"searched": run.best_at(target, "search")}
    finalists = run.complete("search")
    finalists = finalists[finalists["target"] == target]
    for method in BASELINE_KINDS:
        row = run.best_at(target, method)
        if row is None and method != "layer-uniform":
            origin = finalists[[method in (o or []) for o in finalists["origins"]]]
            row = None if origin.empty else origin.iloc[0]
        found[method] = row
    return {method: row for method, row in found.items() if row is not None}


def in_setting(run: Run, setting: Setting, target: float) -> dict[str, pd.Series]:
    """What each of ``setting``'s methods gives at ``target``: :func:`at_target` for
    ``structured``, else the baseline of each kind trained for ``target``."""
    if setting == "structured":
        return at_target(run, target)
    found = {kind: run.best_at(target, kind) for kind in SETTINGS[setting]}
    return {kind: row for kind, row in found.items() if row is not None}


def target_table(run: Run, resamples: int = 1000) -> pd.DataFrame:
    """One row per setting, target and method that the run has: size, search and test
    metrics, and the test difference to the setting's first method present (``searched``,
    then the baselines in :data:`SETTINGS` order) with its paired bootstrap 95% interval."""
    task, test = held_out(run)
    rows = []
    targets = sorted({float(t) for t in run.trials["target"].dropna()}, reverse=True)
    for setting in SETTINGS:
        for target in targets:
            found = in_setting(run, setting, target)
            against = next(iter(found), None)
            for method, row in found.items():
                entry = {
                    "setting": setting,
                    "target": target,
                    "method": method,
                    "trial": int(row["trial"]),
                    "size": round(float(row["size"]), 4),
                    f"{run.metric} search": round(float(row["metric_search"]), 4),
                    f"{run.metric} test": round(float(row["metric_test"]), 4),
                    "against": None,
                    "test diff": None,
                    "95% interval": None,
                }
                if against is not None and method != against:
                    reference = found[against]
                    gap = paired_bootstrap(
                        task, test, [outputs_of(run, row)], [outputs_of(run, reference)], resamples
                    )
                    entry["against"] = against
                    entry["test diff"] = round(gap.diff, 4)
                    entry["95% interval"] = f"[{gap.low:+.4f}, {gap.high:+.4f}]"
                rows.append(entry)
    return pd.DataFrame(rows)
