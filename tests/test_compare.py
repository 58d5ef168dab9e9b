"""Paired comparisons on the test split: every retrained trial records its per-example test
outputs, they give back its test metric, and the paired bootstrap interval is centred on the
difference, zero for a model against itself and clear of zero for a real gap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoprune.reports.compare import outputs_of, paired_bootstrap, split_of
from autoprune.reports.results import load_run
from autoprune.tasks import Classification
from autoprune.tasks.data import Encoded


def labelled(labels: list[int]) -> Encoded:
    rows = len(labels)
    return Encoded(
        input_ids=torch.zeros(rows, 4, dtype=torch.long),
        attention_mask=torch.ones(rows, 4, dtype=torch.long),
        labels=torch.tensor(labels),
    )


def test_recorded_outputs_give_back_the_recorded_test_metric(tiny_run: Path) -> None:
    run = load_run(tiny_run)
    task, test = split_of(run)
    complete = run.complete("search")
    assert not complete.empty
    search = split_of(run, "search")[1]
    for _, row in complete.iterrows():
        outputs = outputs_of(run, row)
        assert outputs.shape == (len(test),)
        assert task.metric_of(outputs, test) == pytest.approx(row["metric_test"])
        on_search = outputs_of(run, row, "search")
        assert task.metric_of(on_search, search) == pytest.approx(row["metric_search"])
        same = paired_bootstrap(task, test, [outputs], [outputs], resamples=50)
        assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("metric", ["accuracy", "matthews"])
def test_the_interval_brackets_the_difference_and_shows_a_real_gap(metric: str) -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(2, (400,), generator=generator)
    data = labelled(labels.tolist())
    task = Classification(metric=metric, num_labels=2)
    good = torch.where(torch.rand(400, generator=generator) < 0.9, labels, 1 - labels)
    poor = torch.where(torch.rand(400, generator=generator) < 0.6, labels, 1 - labels)
    gap = paired_bootstrap(task, data, [good], [poor], resamples=300)
    assert gap.diff == pytest.approx(task.metric_of(good, data) - task.metric_of(poor, data))
    assert 0 < gap.low < gap.diff < gap.high
    assert paired_bootstrap(task, data, [poor], [good], resamples=300).high < 0
    close = torch.where(torch.arange(400) < 2, 1 - good, good)  # two examples differ
    tie = paired_bootstrap(task, data, [good], [close], resamples=300)
    assert tie.low <= 0 <= tie.high


def test_outputs_that_do_not_fit_are_refused() -> None:
    task = Classification(metric="accuracy", num_labels=2)
    data = labelled([0, 1, 1])
    with pytest.raises(ValueError, match="outputs have 2, 3 rows for 3 examples"):
        paired_bootstrap(task, data, [torch.tensor([0, 1])], [torch.tensor([0, 1, 1])])
    with pytest.raises(ValueError, match="each side needs the outputs of at least one model"):
        paired_bootstrap(task, data, [], [torch.tensor([0, 1, 1])])


def test_seeds_on_a_side_are_averaged() -> None:
    task = Classification(metric="accuracy", num_labels=2)
    data = labelled([0, 1, 1, 0])
    right, wrong = torch.tensor([0, 1, 1, 0]), torch.tensor([1, 0, 0, 1])
    half = paired_bootstrap(task, data, [right, wrong], [wrong], resamples=20)
    assert half.diff == pytest.approx(0.5) and half.low == half.high == pytest.approx(0.5)
