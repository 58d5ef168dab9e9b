"""What a strategy asks of a backend: its candidates screened and retrained somewhere.

The strategy decides what to evaluate; an :class:`Executor` decides where: the local
backend's in this process, the Ray backend's on Ray workers. Either way the records are
written in the driver, by the run's ledgers, so they do not depend on the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from autoprune.engine.prune import PruneConfig
from autoprune.run.screen import BatchScreener


class Executor(BatchScreener, Protocol):
    """Screens lists of candidates on slices of the screening split (what
    :func:`~autoprune.run.screen.select` asks for, outcomes in the candidates' order) and
    retrains configurations as trials of the run's search study."""

    def retrain(self, jobs: Sequence[tuple[PruneConfig, dict[str, Any]]]) -> None:
        """Retrain each configuration of ``jobs`` with the study's recipe as a new trial of
        the search study, with its attributes noted on it, and record it there (complete,
        stopped at a rung, or failed with its reason), as the local backend records a search
        trial."""
        ...
