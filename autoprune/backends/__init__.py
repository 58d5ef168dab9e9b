"""Backends run a session's trials: ``local`` in this process, ``ray`` through Ray Tune;
and a targeted search's screening and retraining, through an executor of either."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoprune.run.session import Session
    from autoprune.strategies.executor import Executor


def run_trials(session: Session) -> None:
    """Run the session's remaining trials on the backend its study names."""
    if session.spec.backend.name == "ray":
        from autoprune.backends import ray  # imports Ray only when asked for

        ray.run_trials(session)
    else:
        from autoprune.backends import local

        local.run_trials(session)


@contextmanager
def executor(session: Session) -> Iterator[Executor]:
    """The executor of the backend the session's study names, for the block (a Ray
    executor's workers are released, and a Ray it started stopped, when it ends)."""
    if session.spec.backend.name == "ray":
        from autoprune.backends import ray

        with ray.executor(session) as found:
            yield found
    else:
        from autoprune.backends import local

        yield local.LocalExecutor(session)
