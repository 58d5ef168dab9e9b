"""Pareto fronts and hypervolume for (metric up, size down) points."""

from __future__ import annotations

from collections.abc import Sequence


def nondominated(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each ``(metric, size)`` point: whether no other point is at least as good in both
    and better in one (higher metric, smaller size). Exact duplicates are all kept.
    """
    flags = []
    for metric, size in points:
        dominated = any((m >= metric and s <= size) and (m > metric or s < size) for m, s in points)
        flags.append(not dominated)
    return flags


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
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
