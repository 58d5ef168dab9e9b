"""Proposals inside the size band: the one place the study's size band is applied.

The controller proposes; a proposal whose exact size (foreseen by the size model, without
building the model) falls outside ``objectives.min_size``/``max_size`` is recorded as
``outside_band``, costs no training and no budget, and the controller is asked again.
"""

from __future__ import annotations

import optuna

from autoprune.engine.measure import SizeModel
from autoprune.engine.prune import PruneConfig, PruneConfigError
from autoprune.run.ledger import Ledger
from autoprune.run.trial import TrialSettings
from autoprune.search.space import SearchSpace
from autoprune.search.spec import ObjectivesSpec, StudyError

# Give up when the controller proposes this many configurations in a row outside the size band
# (or invalid for the model): the band is reachable (checked at start) but not being found.
MAX_REJECTED_IN_A_ROW = 200


class Proposer:
    """Asks the search ledger's controller for configurations inside the size band.

    Args:
        ledger: The search's ledger (its study's sampler is the controller).
        space: The search space, which turns parameters into a PruneConfig.
        sizes: The exact size of any configuration.
        objectives: The size unit and the band.
        settings: The trials' stage and fidelity, recorded on rejected proposals.
    """

    def __init__(
        self,
        ledger: Ledger,
        space: SearchSpace,
        sizes: SizeModel,
        objectives: ObjectivesSpec,
        settings: TrialSettings,
    ) -> None:
        self.ledger = ledger
        self.space = space
        self.sizes = sizes
        self.objectives = objectives
        self.settings = settings
        self.distributions = space.distributions()

    def size_ratio(self, config: PruneConfig) -> float:
        """The configuration's size in the study's unit, foreseen without building it."""
        return self.sizes.size(config).ratio(self.sizes.dense, self.objectives.size)

    def in_band(self, ratio: float) -> bool:
        low, high = self.objectives.min_size, self.objectives.max_size
        return (low is None or ratio >= low) and (high is None or ratio <= high)

    def check_reachable(self) -> None:
        """A clear error, before any training, when no configuration of the space fits."""
        low, high = self.objectives.min_size, self.objectives.max_size
        if low is None and high is None:
            return
        smallest, largest = sorted(self.size_ratio(c) for c in self.space.extremes())
        if largest < (low or 0.0) or smallest > (high if high is not None else 1.0):
            raise StudyError(
                f"objectives.min_size/max_size: no configuration fits the size band "
                f"[{low or 0:g}, {high if high is not None else 1:g}] "
                f"({self.objectives.size}): the search space spans sizes {smallest:.3f} to "
                f"{largest:.3f}"
            )

    def propose(self) -> tuple[optuna.trial.Trial, PruneConfig]:
        """A new trial of the search study, started in the ledger, and its configuration,
        which fits the model and the band.

        Proposals the model cannot take (a head count that does not split over a layer's
        key/value groups, say) are recorded as ``invalid``, those outside the band as
        ``outside_band``; neither costs training or budget, and the controller is asked again.
        """
        study = self.ledger.study
        for _ in range(MAX_REJECTED_IN_A_ROW):
            trial = study.ask(self.distributions)
            config = self.space.to_config(trial.params)
            settings = self.settings
            self.ledger.start(trial.number, "search", config, settings.stage, settings.fidelity)
            try:
                ratio = self.size_ratio(config)
            except PruneConfigError as error:
                self.ledger.record_not_run(trial.number, "invalid", str(error))
                continue
            if self.in_band(ratio):
                return trial, config
            low, high = self.objectives.min_size, self.objectives.max_size
            reason = (
                f"size {ratio:.3f} ({self.objectives.size}) is outside the band "
                f"[{low or 0:g}, {high if high is not None else 1:g}]"
            )
            self.ledger.record_not_run(trial.number, "outside_band", reason)
        raise StudyError(
            f"the controller proposed {MAX_REJECTED_IN_A_ROW} configurations in a row that are "
            f"outside the size band or that the model cannot take; widen "
            f"objectives.min_size/max_size or change the search space"
        )
