"""Export a trial of a run: its configuration, its pruned and retrained model, a model card.

How the exported model's metric is guaranteed to match the trial's record: the search keeps
the retrained weights of every trial on the front (``RUN/checkpoints/``), and export loads
exactly those weights and measures them again on both splits. A trial whose checkpoint was
not kept (one off the front, chosen with ``--trial``, or one whose checkpoint could not be
written) is re-run from its configuration with the study's seeded recipe; export then prints
both numbers, which agree on the machine and thread count the trial ran with and may differ
slightly elsewhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from autoprune.engine.measure import measure
from autoprune.engine.serialize import load_pruned, save_pruned
from autoprune.errors import AutopruneError
from autoprune.reports.compare import choose
from autoprune.reports.results import Run, config_of, load_run
from autoprune.run.ledger import Kind
from autoprune.run.session import open_run
from autoprune.run.trial import run_trial

log = logging.getLogger("autoprune")


class ExportError(AutopruneError, ValueError):
    """No trial fits the choice, or the destination cannot be written; the message says why."""


@dataclass
class Exported:
    """What export wrote and measured."""

    directory: Path
    trial: int
    recorded: dict[str, float]
    measured: dict[str, float]
    from_checkpoint: bool


def choose_trial(
    run: Run,
    trial: int | None = None,
    max_size: float | None = None,
    min_metric: float | None = None,
    kind: Kind = "search",
    target: float | None = None,
) -> pd.Series:
    """The trial to export: by number, the best front point within ``max_size``, the
    smallest front point reaching ``min_metric``, or a targeted search's choice at ``target``
    (:func:`~autoprune.reports.compare.choose`; for a baseline kind, its trial built for
    ``target``); all but the number chosen on the search split."""
    if sum(x is not None for x in (trial, max_size, min_metric, target)) != 1:
        raise ExportError("give exactly one of --trial, --max-size, --min-metric, --target")
    if target is not None:
        found = choose(run, target) if kind == "search" else run.best_at(target, kind)
        if found is None:
            targets = sorted({float(t) for t in run.complete(kind)["target"].dropna()})
            raise ExportError(
                f"--target {target}: no complete {kind} trial was built for it; targets "
                f"with one: {targets or 'none'}"
            )
        return found
    if trial is not None:
        rows = run.complete(kind)
        match = rows[rows["trial"] == trial]
        if match.empty:
            raise ExportError(
                f"{run.path}: no complete {kind} trial {trial}; complete trials: "
                f"{sorted(rows['trial'].tolist())}"
            )
        return match.iloc[0]
    front = run.front(kind)
    if front.empty:
        raise ExportError(f"{run.path}: no complete {kind} trial to export yet")
    if max_size is not None:
        best = run.best_under(max_size, kind)
        if best is None:
            raise ExportError(
                f"--max-size {max_size}: no front trial is that small; the smallest has size "
                f"{front['size'].min():.3f} ({run.size_unit})"
            )
        return best
    search = front["metric_search"]
    reaching = front[search >= min_metric if run.higher_is_better else search <= min_metric]
    if reaching.empty:
        best = search.max() if run.higher_is_better else search.min()
        raise ExportError(
            f"--min-metric {min_metric}: no front trial reaches it on the search split; the "
            f"best reaches {best:.4f} ({run.metric})"
        )
    return reaching.sort_values("size").iloc[0]


def _model_card(run: Run, row: pd.Series, measured: dict[str, float], size: dict[str, int]) -> str:
    metric = run.metric
    return "\n".join(
        [
            f"# {run.spec.name}: trial {row['trial']} pruned with autoprune",
            "",
            f"Pruned from `{run.spec.model.source}`; load with `autoprune.load_pruned(DIR)`.",
            "",
            "| | pruned | dense |",
            "|---|---|---|",
            f"| {metric}, test split (held out from the search) | {measured['metric_test']:.4f} "
            f"| {run.dense.metric_test:.4f} |",
            f"| {metric}, search split | {measured['metric_search']:.4f} "
            f"| {run.dense.metric_search:.4f} |",
            f"| parameters | {size['params']:,} | {run.dense.size.params:,} |",
            f"| prunable parameters | {size['prunable']:,} | {run.dense.size.prunable:,} |",
            f"| non-zero prunable parameters | {size['nonzero']:,} | {run.dense.size.nonzero:,} |",
            f"| MACs per sequence of {size['seq_len']} tokens | {size['macs']:,} "
            f"| {run.dense.size.macs:,} |",
            "",
            f"Heads per layer: {row['heads']}; feed-forward neurons per layer: {row['ffn']}; "
            f"sparsity per layer: {row['sparsity']}.",
            f"Retrained for {row['retrain_steps']} steps with distillation from the dense model.",
            "",
        ]
    )


def check_destination(out: Path, force: bool) -> None:
    """Refuse, before any work, an ``out`` that is a file, or a non-empty directory unless
    ``force`` (then files of the same names are overwritten, others are left)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory; give a directory")
    if out.is_dir() and not force:
        held = sorted(p.name for p in out.iterdir())
        if held:
            shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
            raise ExportError(
                f"--out {out}: the directory is not empty ({shown}); choose a new or empty "
                f"directory, or pass --force to overwrite files of the same names"
            )


def export(
    run_dir: str | Path,
    out: str | Path,
    trial: int | None = None,
    max_size: float | None = None,
    min_metric: float | None = None,
    kind: Kind = "search",
    force: bool = False,
    target: float | None = None,
) -> Exported:
    """Write ``prune_config.json``, the pruned model and ``README.md`` for a chosen trial.

    ``out`` must be new or empty unless ``force``; that is checked before any work. The model
    is measured again on both splits; recorded and measured metrics are returned (and logged)
    side by side.
    """
    out = Path(out)
    check_destination(out, force)
    run = load_run(run_dir)
    row = choose_trial(run, trial, max_size, min_metric, kind, target)
    number = int(row["trial"])
    config = config_of(row, source=f"{run.path}: trial {number}")
    session = open_run(run.path)
    checkpoint = session.run.checkpoint(kind, number)
    if checkpoint.is_dir():
        model, _ = load_pruned(checkpoint)
    else:
        if isinstance(row["checkpoint_error"], str):
            log.warning(
                "trial %d is on the front, but its checkpoint could not be written during the "
                "search (%s): re-running it from its configuration",
                number,
                row["checkpoint_error"],
            )
        elif number in set(run.front(kind)["trial"]):
            log.info("front trial %d kept no checkpoint (stopped while saving): re-running", number)
        else:
            log.info("trial %d kept no checkpoint (not on the front): re-running it", number)
        _, model = run_trial(session.prepared, config, session.settings)
    task, data = session.prepared.task, session.prepared.data
    measured = {
        "metric_search": task.evaluate(model, data.search),
        "metric_test": task.evaluate(model, data.test),
    }
    recorded = {
        "metric_search": float(row["metric_search"]),
        "metric_test": float(row["metric_test"]),
    }
    save_pruned(model, out, session.prepared.tokenizer)
    config.save(out / "prune_config.json")
    size = measure(model, run.spec.max_length).to_dict()
    (out / "README.md").write_text(_model_card(run, row, measured, size))
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "trial": number,
                "recorded": recorded,
                "measured": measured,
                "size": size,
                "dense": run.dense.to_dict(),
            },
            indent=2,
        )
    )
    return Exported(out, number, recorded, measured, checkpoint.is_dir())
