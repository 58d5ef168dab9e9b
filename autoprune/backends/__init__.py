"""Backends run a session's trials: ``local`` in this process, ``ray`` through Ray Tune."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoprune.run.session import Session


def run_trials(session: Session) -> None:
    """Run the session's remaining trials on the backend its study names."""
    if session.spec.backend.name == "ray":
        from autoprune.backends import ray  # imports Ray only when asked for

        ray.run_trials(session)
    else:
        from autoprune.backends import local

        local.run_trials(session)
