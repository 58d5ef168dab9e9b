"""Classification metrics: accuracy, Matthews correlation, F1; each with its chance level."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

MetricName = Literal["accuracy", "matthews", "f1"]


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions == labels).float().mean())


def matthews(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004); 0 when it is undefined."""
    classes = int(max(predictions.max(), labels.max())) + 1
    confusion = torch.zeros(classes, classes, dtype=torch.float64)
    confusion.index_put_(
        (labels, predictions), torch.ones(len(labels), dtype=torch.float64), accumulate=True
    )
    total = confusion.sum()
    correct = confusion.trace()
    true_counts = confusion.sum(dim=1)
    predicted_counts = confusion.sum(dim=0)
    numerator = correct * total - (true_counts * predicted_counts).sum()
    denominator = torch.sqrt(
        (total**2 - (predicted_counts**2).sum()) * (total**2 - (true_counts**2).sum())
    )
    return float(numerator / denominator) if denominator > 0 else 0.0


def f1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """F1 of class 1 for two classes; the macro average over classes otherwise."""
    classes = int(max(predictions.max(), labels.max())) + 1
    positives = [1] if classes <= 2 else list(range(classes))
    scores = []
    for c in positives:
        tp = float(((predictions == c) & (labels == c)).sum())
        fp = float(((predictions == c) & (labels != c)).sum())
        fn = float(((predictions != c) & (labels == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0)
    return sum(scores) / len(scores)


METRICS: dict[MetricName, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "accuracy": accuracy,
    "matthews": matthews,
    "f1": f1,
}


def chance_level(metric: MetricName, num_labels: int) -> float:
    """What guessing scores: ``1 / num_labels`` for accuracy, 0 for Matthews correlation and F1."""
    return 1.0 / num_labels if metric == "accuracy" else 0.0
