"""Running one trial in this process and recording it: the local backend and baselines."""

from __future__ import annotations

from autoprune.engine.prune import PruneConfig
from autoprune.engine.serialize import save_pruned
from autoprune.run.ledger import Kind, Ledger
from autoprune.run.prepare import Prepared
from autoprune.run.trial import TrialOutcome, TrialSettings, run_trial


def execute(
    prepared: Prepared,
    settings: TrialSettings,
    ledger: Ledger,
    number: int,
    config: PruneConfig,
    kind: Kind,
) -> TrialOutcome | None:
    """Run trial ``number`` of ``ledger``'s study with ``config`` and record it.

    Search trials stop early at rungs where the ledger says so. A trial that raises is
    recorded as failed with its reason and None is returned: the search goes on. Ctrl-C
    records the trial as interrupted and propagates.
    """

    def on_rung(step: int, outcome: TrialOutcome) -> bool:
        size = outcome.ratios[settings.size_unit]
        return ledger.rung_decision(number, step, outcome.metric_search, size)

    use_rungs = kind == "search" and bool(settings.rungs)
    ledger.start(number, kind, config, settings.stage, settings.fidelity)
    try:
        outcome, model = run_trial(prepared, config, settings, on_rung if use_rungs else None)
    except KeyboardInterrupt:
        ledger.record_not_run(number, "interrupted", "stopped by the user")
        raise
    except Exception as error:  # a failing trial is recorded and the search goes on
        reason = f"{type(error).__name__}: {error}"
        ledger.record_not_run(number, "failed", reason)
        return None
    ledger.record_outcome(
        number, outcome, kind, lambda path: save_pruned(model, path, prepared.tokenizer)
    )
    return outcome
