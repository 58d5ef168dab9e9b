"""Pictures of a run: every trial, the front, the baselines and the dense model.

Two panels side by side: the search split (what the controller optimized, where the front
is chosen) and the test split (the same trials' held-out scores, the front's points joined).
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from autoprune.reports.results import Run
from autoprune.run.ledger import Kind

STYLES: dict[Kind, tuple[str, str, str]] = {  # kind -> (label, colour, marker)
    "search": ("searched", "#1f77b4", "o"),
    "uniform": ("uniform baseline", "#ff7f0e", "s"),
    "layer-uniform": ("layer-uniform baseline", "#2ca02c", "^"),
    "global": ("global-importance baseline", "#d62728", "D"),
    "uniform-sparsity": ("uniform-sparsity baseline", "#8c564b", "v"),
    "owl": ("OWL baseline", "#e377c2", "P"),
    "block-influence": ("block-influence baseline", "#7f7f7f", "X"),
}


def plot_png(run: Run, path: Path) -> Path:
    """Write the matplotlib picture of ``run`` to ``path``.

    The figure is drawn without pyplot, so matplotlib's global backend and figure list are
    left as the caller has them.
    """
    figure = Figure(figsize=(12, 4.8))
    axes = figure.subplots(1, 2, sharey=True)
    for axis, split in zip(axes, ("search", "test"), strict=True):
        for kind, (label, colour, marker) in STYLES.items():
            trials = run.complete(kind)
            if trials.empty:
                continue
            front = run.front(kind)
            axis.scatter(
                trials["size"],
                trials[f"metric_{split}"],
                s=14,
                alpha=0.35,
                color=colour,
                marker=marker,
            )
            axis.plot(
                front["size"],
                front[f"metric_{split}"],
                marker=marker,
                color=colour,
                label=f"{label} (front on search)",
                linewidth=1.5,
                drawstyle="steps-post",
            )
        dense = run.dense.metric_search if split == "search" else run.dense.metric_test
        axis.scatter([1.0], [dense], marker="*", s=180, color="black", label="dense", zorder=5)
        axis.set_title(
            f"{split} split" + (" (never seen by the controller)" if split == "test" else "")
        )
        axis.set_xlabel(f"size ({run.size_unit}, ratio to dense)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(run.metric)
    axes[1].legend(loc="lower right", fontsize=8)
    figure.suptitle(f"{run.spec.name}: {run.spec.controller.name} controller")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def plot_html(run: Run, path: Path) -> Path:
    """Write the interactive plotly picture of ``run`` to ``path`` (hover shows the config)."""
    figure = make_subplots(
        rows=1, cols=2, shared_yaxes=True, subplot_titles=("search split", "test split (held out)")
    )
    for column, split in enumerate(("search", "test"), start=1):
        for kind, (label, colour, _) in STYLES.items():
            trials = run.complete(kind)
            if trials.empty:
                continue
            front = run.front(kind)
            hover = [
                f"trial {t}<br>heads {h}<br>ffn {f}"
                for t, h, f in zip(trials["trial"], trials["heads"], trials["ffn"], strict=True)
            ]
            figure.add_trace(
                go.Scatter(
                    x=trials["size"],
                    y=trials[f"metric_{split}"],
                    mode="markers",
                    marker={"color": colour, "opacity": 0.4},
                    name=label,
                    text=hover,
                    legendgroup=kind,
                    showlegend=False,
                ),
                row=1,
                col=column,
            )
            figure.add_trace(
                go.Scatter(
                    x=front["size"],
                    y=front[f"metric_{split}"],
                    mode="lines+markers",
                    line={"color": colour, "shape": "hv"},
                    name=f"{label} front",
                    legendgroup=kind,
                    showlegend=column == 1,
                ),
                row=1,
                col=column,
            )
        dense = run.dense.metric_search if split == "search" else run.dense.metric_test
        figure.add_trace(
            go.Scatter(
                x=[1.0],
                y=[dense],
                mode="markers",
                marker={"symbol": "star", "size": 14, "color": "black"},
                name="dense",
                showlegend=column == 1,
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text=f"size ({run.size_unit})", row=1, col=column)
    figure.update_yaxes(title_text=run.metric, row=1, col=1)
    figure.update_layout(title=f"{run.spec.name}: {run.spec.controller.name} controller")
    figure.write_html(path, include_plotlyjs=True)
    return path


def plot(run: Run, directory: Path | None = None) -> tuple[Path, Path]:
    """Write ``pareto.png`` and ``pareto.html`` into ``directory`` (default: the run)."""
    directory = directory or run.path
    directory.mkdir(parents=True, exist_ok=True)
    return plot_png(run, directory / "pareto.png"), plot_html(run, directory / "pareto.html")
