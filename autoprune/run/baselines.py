"""Baselines trained into a run the same way as the search's trials.

``uniform``: one keep ratio for heads and feed-forward neurons in every layer.
``layer-uniform``: one configuration in every layer, head and feed-forward ratios chosen
independently (a grid).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from autoprune.engine.arch import describe
from autoprune.engine.prune import PruneConfig
from autoprune.run.execute import execute
from autoprune.run.ledger import KIND, STATUS, Kind
from autoprune.run.session import Session

log = logging.getLogger("autoprune")


def baseline_configs(
    session: Session,
    uniform: Sequence[float] = (),
    head_ratios: Sequence[float] = (),
    ffn_ratios: Sequence[float] = (),
) -> list[tuple[Kind, PruneConfig]]:
    """Uniform configurations (one keep ratio for heads and ffn in every layer), then the
    layer-uniform grid (every pair of a head ratio and a feed-forward ratio)."""
    arch = describe(session.prepared.model)
    pairs: list[tuple[Kind, float, float]] = [("uniform", r, r) for r in uniform]
    pairs += [("layer-uniform", h, f) for h in head_ratios for f in ffn_ratios]
    return [(kind, PruneConfig.uniform(arch, heads=h, ffn=f)) for kind, h, f in pairs]


def train_baselines(session: Session, configs: Sequence[tuple[Kind, PruneConfig]]) -> None:
    """Train baseline configurations with the study's recipe into the run's baseline study.

    A configuration already recorded as complete is not trained again.
    """
    ledger = session.baseline
    ledger.recover_interrupted()
    done = [
        (t.user_attrs.get(KIND), t.user_attrs.get("config"))
        for t in ledger.study.get_trials(deepcopy=False)
        if t.user_attrs.get(STATUS) == "complete"
    ]
    todo = [(k, c) for k, c in configs if (k, c.to_dict()) not in done]
    log.info(
        "baseline: %d configuration(s) to train, %d already done",
        len(todo),
        len(configs) - len(todo),
    )
    for kind, config in todo:
        number = ledger.study.ask().number
        execute(session.prepared, session.settings, ledger, number, config, kind)
