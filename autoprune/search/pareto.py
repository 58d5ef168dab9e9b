"""Pareto fronts and hypervolume for (metric up, size down) points."""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]  # (metric: higher is better, size: lower is better)


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is at least as good as ``b`` in both objectives and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def nondominated(points: Sequence[Point]) -> list[bool]:
    """For each point: whether no other point dominates it. Exact duplicates are all kept."""
    return [not any(dominates(other, point) for other in points) for point in points]


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """Area dominated by ``(metric, size)`` points and bounded by ``reference``.

    ``reference`` is ``(worst metric, largest size)``, e.g. (chance level, 1.0); points worse
    than it in either objective add nothing.
    """
    ref_metric, ref_size = reference
    useful = sorted((s, m) for m, s in points if m > ref_metric and s < ref_size)
    area, best = 0.0, ref_metric
    for index, (size, metric) in enumerate(useful):
        best = max(best, metric)
        next_size = useful[index + 1][0] if index + 1 < len(useful) else ref_size
        area += (best - ref_metric) * (next_size - size)
    return area
