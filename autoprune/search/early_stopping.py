"""Early stopping for two objectives: multi-objective successive halving.

Optuna's pruners refuse multi-objective studies and Ray's ASHA ranks on one metric, so
autoprune brings its own rule, in the spirit of asynchronous successive halving (Li et al.
2020) with the ranking of NSGA-II (Deb et al. 2002). During retraining a trial reports its
search-split metric at a few rungs (retraining steps). At each rung, among all trials that
reached it, points ``(metric, size)`` are sorted by non-dominated rank, ties broken by
crowding distance; a trial continues only while it is in the best ``keep`` fraction. Until
``min_trials`` trials have reached a rung, every trial continues. A small model with a
modest metric can be non-dominated, so the rule keeps the front's spread rather than only
its most accurate end.

A stopped trial is recorded as stopped (Optuna state PRUNED) with the metric it had at its
last rung; it is never a point of the front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from autoprune.search.pareto import Point, dominates


def nondominated_ranks(points: Sequence[Point]) -> list[int]:
    """Rank 0 for the Pareto front, 1 for the front of what remains, and so on."""
    ranks = [-1] * len(points)
    remaining = set(range(len(points)))
    rank = 0
    while remaining:
        front = {
            i
            for i in remaining
            if not any(dominates(points[j], points[i]) for j in remaining if j != i)
        }
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def crowding_distances(points: Sequence[Point], members: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each member of one front (its ends are infinite)."""
    distance = {i: 0.0 for i in members}
    for objective in range(2):
        ordered = sorted(members, key=lambda i: points[i][objective])
        low, high = points[ordered[0]][objective], points[ordered[-1]][objective]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if high == low:
            continue
        for before, current, after in zip(ordered, ordered[1:], ordered[2:], strict=False):
            gap = points[after][objective] - points[before][objective]
            distance[current] += gap / (high - low)
    return distance


def preference_order(points: Sequence[Point]) -> list[int]:
    """Indices of ``points`` from best to worst: by non-dominated rank, then crowding distance."""
    ranks = nondominated_ranks(points)
    crowding: dict[int, float] = {}
    for rank in set(ranks):
        crowding.update(crowding_distances(points, [i for i, r in enumerate(ranks) if r == rank]))
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowding[i], i))


def should_continue(others: Sequence[Point], point: Point, keep: float, min_trials: int) -> bool:
    """Whether a trial at ``point`` continues past a rung that ``others`` reached before it.

    It continues while fewer than ``min_trials`` trials (itself included) reached the rung,
    or while it is among the best ``ceil(keep * n)`` of the ``n`` trials there.
    """
    points = [*others, point]
    if len(points) < min_trials:
        return True
    position = preference_order(points).index(len(points) - 1)
    return position < math.ceil(keep * len(points))
