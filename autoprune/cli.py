"""The ``autoprune`` command: search, baseline, pareto, plot, export."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import optuna

from autoprune import __version__
from autoprune.errors import AutopruneError
from autoprune.reports.results import TableFormat
from autoprune.run.baselines import TARGET_KINDS, TargetKind
from autoprune.run.ledger import KINDS, Kind
from autoprune.search.controllers import CONTROLLERS
from autoprune.search.spec import BackendName, StudyError

log = logging.getLogger("autoprune")


DEFAULT_RATIOS = [0.25, 0.5, 0.75]


class UsageError(AutopruneError):
    """Command-line arguments that do not go together."""


def _ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios, got {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"ratios must be in [0, 1], got {text!r}")
    return values


def _search(args: argparse.Namespace) -> None:
    from autoprune.reports.results import load_run, render
    from autoprune.workflow import run_search

    overrides: dict[str, Any] = {}
    if args.backend == "local":  # a Ray study run locally: its Ray-only settings do not apply
        overrides.update(
            {
                "backend.address": None,
                "backend.storage_path": None,
                "backend.concurrent_trials": 1,
                "backend.gpus_per_trial": 0,
            }
        )
    for key, value in (
        ("budget.trials", args.trials),
        ("budget.wall_time", args.wall_time),
        ("controller.name", args.controller),
        ("controller.seed", args.seed),
        ("backend.name", args.backend),
        ("backend.address", args.address),
        ("storage", args.storage),
    ):
        if value is not None:
            overrides[key] = value
    print(render(load_run(run_search(args.study, args.out, overrides))))


def _baseline(args: argparse.Namespace) -> None:
    from autoprune.reports.results import load_run, render
    from autoprune.run.rundir import RunDir
    from autoprune.workflow import run_baselines

    if bool(args.heads_ratios) != bool(args.ffn_ratios):
        raise UsageError("--heads-ratios and --ffn-ratios go together (a layer-uniform grid)")
    spec = RunDir(Path(args.run)).load_spec()  # a missing or foreign directory is refused first
    targets = args.targets or (spec.objectives.targets if args.kind else [])
    if args.targets and not args.kind:
        raise UsageError("--targets needs --kind (--kind global --targets 0.5,0.25)")
    if args.kind and not targets:
        raise UsageError(
            "--kind needs --targets: the study names no objectives.targets to default to"
        )
    kinds: list[TargetKind] = list(dict.fromkeys(args.kind or ()))
    ratios = args.ratios
    if ratios is None:  # the default uniform ratios, unless sizes were asked for
        ratios = [] if targets else DEFAULT_RATIOS
    run_dir = run_baselines(
        args.run,
        uniform=ratios,
        head_ratios=args.heads_ratios or (),
        ffn_ratios=args.ffn_ratios or (),
        targets=[(kind, target) for kind in kinds for target in targets],
    )
    run = load_run(run_dir)
    asked: set[Kind] = set(kinds)
    if ratios:
        asked.add("uniform")
    if args.heads_ratios:
        asked.add("layer-uniform")
    trained: list[Kind] = [kind for kind in TARGET_KINDS if kind in asked]
    print("\n\n".join(render(run, kind=kind) for kind in trained))


def _pareto(args: argparse.Namespace) -> None:
    from autoprune.reports.results import load_run, render

    print(render(load_run(args.run), args.format, args.kind))


def _compare(args: argparse.Namespace) -> None:
    from autoprune.reports.compare import target_table
    from autoprune.reports.results import load_run

    run = load_run(args.run)
    table = target_table(run, args.resamples)
    if table.empty:
        raise StudyError(f"{args.run}: no trial was built for a target size (objectives.targets)")
    if args.format == "json":
        print(table.to_json(orient="records", indent=2))
    elif args.format == "csv":
        print(table.to_csv(index=False), end="")
    else:
        print(
            f"{run.metric} at each target, test split (held out); dense {run.dense.metric_test:.4f}"
        )
        print(table.to_string(index=False))


def _plot(args: argparse.Namespace) -> None:
    from autoprune.reports.plots import plot
    from autoprune.reports.results import load_run

    png, html = plot(load_run(args.run), Path(args.out_dir) if args.out_dir else None)
    print(f"wrote {png} and {html}")


def _export(args: argparse.Namespace) -> None:
    from autoprune.reports.export import export

    result = export(
        args.run,
        args.out,
        args.trial,
        args.max_size,
        args.min_metric,
        args.kind,
        args.force,
        args.target,
    )
    source = "its kept checkpoint" if result.from_checkpoint else "a re-run of its configuration"
    print(f"exported trial {result.trial} from {source} to {result.directory}")
    for split in ("search", "test"):
        key = f"metric_{split}"
        print(
            f"  {split:6s} recorded {result.recorded[key]:.4f}  measured now "
            f"{result.measured[key]:.4f}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune", description="Search for the best way to prune a transformer."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    search = commands.add_parser("search", help="run or resume a search")
    search.add_argument("study", help="study YAML file, or a run directory to resume")
    search.add_argument("--out", help="run directory (default: runs/<study name>)")
    search.add_argument("--trials", type=int, help="trial budget (overrides budget.trials)")
    search.add_argument("--wall-time", type=float, help="seconds (overrides budget.wall_time)")
    search.add_argument("--controller", choices=CONTROLLERS)
    search.add_argument("--seed", type=int, help="controller seed")
    search.add_argument("--backend", choices=get_args(BackendName))
    search.add_argument("--address", help="Ray cluster address (with --backend ray)")
    search.add_argument("--storage", help="Optuna storage URL (default: SQLite in the run)")
    search.set_defaults(handler=_search)

    baseline = commands.add_parser("baseline", help="train baselines into a run")
    baseline.add_argument("run")
    baseline.add_argument(
        "--ratios",
        type=_ratios,
        help="uniform keep ratios for heads and ffn (default 0.25,0.5,0.75 without --targets)",
    )
    baseline.add_argument(
        "--heads-ratios", type=_ratios, help="layer-uniform grid: head keep ratios"
    )
    baseline.add_argument(
        "--ffn-ratios", type=_ratios, help="layer-uniform grid: feed-forward keep ratios"
    )
    baseline.add_argument(
        "--targets",
        type=_ratios,
        help="what to build baselines for (with --kind; default: the study's "
        "objectives.targets): sizes in the study's size unit (uniform, layer-uniform, "
        "global), sparsities (uniform-sparsity, owl) or fractions of the layers to remove "
        "(block-influence)",
    )
    baseline.add_argument(
        "--kind",
        action="append",
        choices=TARGET_KINDS,
        help="the baseline built for each of --targets: uniform (every layer keeps the same "
        "fraction), layer-uniform (the same heads in every layer, the count that screens "
        "best), global (heads and neurons ranked across layers by importance per cost), "
        "uniform-sparsity (every layer equally sparse; Wanda with activation importance), "
        "owl (layer sparsities from their outlier Wanda scores) or block-influence (the "
        "layers that change their input least removed); repeat for several",
    )
    baseline.set_defaults(handler=_baseline)

    pareto = commands.add_parser("pareto", help="print the Pareto front of a run")
    pareto.add_argument("run")
    pareto.add_argument("--format", choices=get_args(TableFormat), default="table")
    pareto.add_argument("--kind", choices=KINDS, default="search")
    pareto.set_defaults(handler=_pareto)

    compare = commands.add_parser(
        "compare",
        help="at each target size: the searched model beside the baselines on the test split",
    )
    compare.add_argument("run")
    compare.add_argument("--format", choices=get_args(TableFormat), default="table")
    compare.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples of the test examples"
    )
    compare.set_defaults(handler=_compare)

    plot = commands.add_parser("plot", help="write pareto.png and pareto.html")
    plot.add_argument("run")
    plot.add_argument("--out-dir", help="folder for the plots (default: the run)")
    plot.set_defaults(handler=_plot)

    export = commands.add_parser("export", help="export a trial's config and pruned model")
    export.add_argument("run")
    choice = export.add_mutually_exclusive_group(required=True)
    choice.add_argument("--trial", type=int, help="trial number")
    choice.add_argument("--max-size", type=float, help="best front point at most this size")
    choice.add_argument("--min-metric", type=float, help="smallest front point reaching this")
    choice.add_argument("--target", type=float, help="a targeted search's choice at this size")
    export.add_argument("--out", required=True, help="directory to write (new or empty)")
    export.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out, overwriting files of the same names",
    )
    export.add_argument(
        "--kind",
        choices=KINDS,
        default="search",
        help="export from the search's front (default) or a baseline's",
    )
    export.set_defaults(handler=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("autoprune").setLevel(logging.WARNING if args.quiet else logging.INFO)
    for library in ("huggingface_hub", "datasets"):  # they print through their own handlers;
        logging.getLogger(library).propagate = False  # through the root too, lines came twice
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from autoprune.workflow import SearchStopped

    try:
        args.handler(args)
    except AutopruneError as error:
        print(f"autoprune: error: {error}", file=sys.stderr)
        return 2
    except SearchStopped as stop:
        print(
            f"autoprune: search stopped (Ctrl-C); finished trials are kept. "
            f"Resume with: autoprune search {stop.run}",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print("autoprune: stopped (Ctrl-C)", file=sys.stderr)
        return 130
    return 0
