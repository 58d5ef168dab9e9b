"""Paired comparisons of pruned models, and the choice of a targeted search's model.

Trials of one run (or of runs sharing their prepared work) were evaluated on the same test
and search examples; each recorded its per-example outputs. The difference of their metrics
is read with a paired bootstrap over those examples (Efron and Tibshirani 1993; Koehn 2004 for
its use on test sets): both models are scored on the same resamples, so the interval carries
the noise of the examples' sampling, not of the models' training. An interval that holds 0
says the examples cannot tell the two apart.

The same reading on the search split makes a targeted search's choice (:func:`choose`): the
finalist with the best search metric replaces the space's heuristic only where the search
split tells them apart, at a level corrected for the finalists it was picked from
(Bonferroni), so a lead within the noise of a few hundred examples (the winner's curse of
picking the best of several noisy scores) does not hand a user a worse model than the
heuristic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch

from autoprune.reports.results import Run, Split
from autoprune.run.ledger import Kind, Origin
from autoprune.search.levels import Heuristic
from autoprune.tasks import Task, make_task
from autoprune.tasks.data import Encoded, TaskData


@dataclass(frozen=True)
class Difference:
    """A model's metric minus another's on the same examples, with a paired bootstrap
    interval.

    Attributes:
        diff: The difference on all the examples.
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
    """The mean metric of the models ``a`` minus that of the models ``b`` on ``data`` (a
    test or search split), and its percentile bootstrap interval at ``level`` over
    ``resamples`` resamples of the examples (the same rows for every model).

    Several models on a side are the same method run with different seeds: the difference
    of their means is resampled, so the interval is about the sampling of the examples, the
    seeds' spread being in the means themselves.

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
            f"outputs have {', '.join(map(str, rows_of))} rows for {len(data)} examples"
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


def split_of(run: Run, split: Split = "test") -> tuple[Task, Encoded]:
    """The run's task and its ``split``, read from its prepared work."""
    data = TaskData.load(run.path / "prepared" / "data")
    return make_task(run.spec.task, data, run.spec.task_settings()), getattr(data, split)


def outputs_of(run: Run, row: pd.Series, split: Split = "test") -> torch.Tensor:
    """The per-example outputs on ``split`` of the trial ``row`` of ``run.trials``.

    Raises:
        KeyError: If the trial recorded none (not complete, stopped early, or recorded by a
            version that kept no search outputs).
    """
    key = (str(row["study"]), int(row["trial"]))
    recorded = run.test_outputs if split == "test" else run.search_outputs
    if key not in recorded:
        raise KeyError(f"{run.path}: {key[0]} trial {key[1]} has no {split} outputs")
    return torch.tensor(recorded[key])


HEURISTICS: tuple[Heuristic, ...] = ("global", "owl", "block-influence")
"""The origins of a budget space's own heuristic finalist (one per space; without it, the
uniform one stands in)."""
CHOICE_ALPHA = 0.05
"""The one-sided error :func:`choose` allows for replacing the heuristic's finalist by one
no better, over all the finalists the challenger was picked from."""
CHOICE_RESAMPLES = 1000
"""Resamples of the search examples behind each choice."""


def finalist_of(run: Run, target: float, origin: Origin) -> pd.Series | None:
    """The targeted search's finalist at ``target`` built from ``origin`` (``uniform``,
    ``global``, ``screened``, ...: the first such), or None."""
    finalists = run.complete("search")
    finalists = finalists[finalists["target"] == target]
    found = finalists[[origin in (origins or []) for origins in finalists["origins"]]]
    return None if found.empty else found.iloc[0]


def choose(run: Run, target: float) -> pd.Series | None:
    """The model a targeted search hands back at ``target`` (None without finalists there).

    With ``screening.choice: best``, the finalist with the best search metric. With
    ``significant`` (the default), that finalist only where it beats the finalist built from
    the space's heuristic (:data:`HEURISTICS`, else the uniform allocation) on the search
    split: the paired bootstrap interval, at a one-sided error of :data:`CHOICE_ALPHA`
    divided among the other finalists it was the best of, lies clear of zero; otherwise the
    heuristic's. Finalists without recorded search outputs (recorded by an earlier version)
    are chosen by their search metric alone.
    """
    best = run.best_at(target, "search")
    if best is None or run.spec.screening.choice == "best":
        return best
    found = (finalist_of(run, target, origin) for origin in (*HEURISTICS, "uniform"))
    incumbent = next((row for row in found if row is not None), None)
    if incumbent is None or int(incumbent["trial"]) == int(best["trial"]):
        return best
    try:
        challenger = outputs_of(run, best, "search")
        holder = outputs_of(run, incumbent, "search")
    except KeyError:
        return best
    task, search = split_of(run, "search")
    finalists = run.complete("search")
    challengers = int((finalists["target"] == target).sum()) - 1
    level = 1.0 - 2.0 * CHOICE_ALPHA / challengers
    gap = paired_bootstrap(
        task, search, [challenger], [holder], resamples=CHOICE_RESAMPLES, level=level
    )
    clear = gap.low > 0 if run.higher_is_better else gap.high < 0
    return best if clear else incumbent


BASELINE_KINDS: tuple[Kind, ...] = ("uniform", "layer-uniform", "global")
METHODS = ("searched", *BASELINE_KINDS)
Setting = Literal["structured", "unstructured", "depth"]
SETTINGS: dict[Setting, tuple[Kind, ...]] = {
    "structured": BASELINE_KINDS,  # targets are sizes
    "unstructured": ("uniform-sparsity", "owl"),  # targets are sparsities
    "depth": ("block-influence",),  # targets are fractions of the layers removed
}
"""Each setting's baseline kinds; what the targets of its trials are, in the comments."""


FINALIST_ORIGINS: dict[Kind, Origin] = {"uniform": "uniform", "global": "global"}
"""The baseline kinds a targeted search's finalists stand in for, by the origin they record."""


def at_target(run: Run, target: float) -> dict[str, pd.Series]:
    """What each method gives at ``target``, where the run has it: ``searched``, the targeted
    search's choice (:func:`choose`); ``uniform`` and ``global``, the baseline of that kind
    trained for ``target``, else the search's finalist built from that allocation;
    ``layer-uniform``, the baseline trained for ``target``."""
    found = {"searched": choose(run, target)}
    for method in BASELINE_KINDS:
        row = run.best_at(target, method)
        origin = FINALIST_ORIGINS.get(method)
        if row is None and origin is not None:
            row = finalist_of(run, target, origin)
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
    task, test = split_of(run)
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
