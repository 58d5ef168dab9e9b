"""Tasks: file formats, sentence pairs, string labels, splits, metrics, and their errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from autoprune.tasks.data import DataError, DataSpec, load_task, read_table
from autoprune.tasks.metrics import accuracy, chance_level, f1, matthews


@pytest.fixture(scope="module")
def tokenizer(minilm_path: str):
    return AutoTokenizer.from_pretrained(minilm_path)


def test_rte_pairs_with_string_labels(data_dir: Path, tokenizer) -> None:
    spec = DataSpec(
        train=data_dir / "rte" / "train.tsv",
        test=data_dir / "rte" / "validation.tsv",
        text=["sentence1", "sentence2"],
        labels=["not_entailment", "entailment"],
        search_samples=100,
        train_samples=200,
    )
    task = load_task(spec, tokenizer, max_length=128)
    assert task.label_names == ["not_entailment", "entailment"]
    assert len(task.search) == 100 and len(task.pool) == 200 and len(task.test) == 277
    assert set(task.test.labels.tolist()) == {0, 1}
    assert task.pool.token_type_ids is not None and task.pool.token_type_ids.max() == 1
    again = load_task(spec, tokenizer, max_length=128)
    assert torch.equal(again.search.input_ids, task.search.input_ids)  # same seed, same split


def test_search_split_is_disjoint_from_the_pool(tmp_path: Path, tokenizer) -> None:
    frame = pd.DataFrame(
        {"text": [f"sentence number {i}" for i in range(300)], "label": [i % 2 for i in range(300)]}
    )
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.head(40).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    spec = DataSpec(
        train=tmp_path / "train.csv",
        test=tmp_path / "test.jsonl",
        text=["text"],
        search_samples=100,
    )
    task = load_task(spec, tokenizer, max_length=16)
    decode = tokenizer.batch_decode
    search = set(decode(task.search.input_ids, skip_special_tokens=True))
    pool = set(decode(task.pool.input_ids, skip_special_tokens=True))
    assert len(search) == 100 and len(pool) == 200 and not search & pool
    assert len(task.test) == 40


def test_search_split_of_long_examples_only(tmp_path: Path, tokenizer) -> None:
    lengths = [3 + i % 10 for i in range(300)]  # 3 to 12 words; 90 have 10 or more
    texts = [" ".join(["word"] * (n - 1) + [str(i)]) for i, n in enumerate(lengths)]
    frame = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(300)]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.head(40).to_csv(tmp_path / "test.csv", index=False)
    spec = DataSpec(
        train=tmp_path / "train.csv",
        test=tmp_path / "test.csv",
        text=["text"],
        search_samples=50,
        search_min_words=10,
    )

    def words(split) -> list[int]:
        decoded = tokenizer.batch_decode(split.input_ids, skip_special_tokens=True)
        return [len(text.split()) for text in decoded]

    task = load_task(spec, tokenizer, max_length=32)
    assert len(task.search) == 50 and len(task.pool) == 250
    assert min(words(task.search)) >= 10
    assert min(words(task.pool)) < 10  # the pool keeps the short ones
    search = set(tokenizer.batch_decode(task.search.input_ids))
    assert not search & set(tokenizer.batch_decode(task.pool.input_ids))
    every = load_task(spec.model_copy(update={"search_min_words": None}), tokenizer, 32)
    assert min(words(every.search)) < 10
    too_many = spec.model_copy(update={"search_samples": 100})
    with pytest.raises(DataError, match=r"only 90 training examples .*data.search_min_words"):
        load_task(too_many, tokenizer, max_length=32)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_file_format_reads_the_same(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame({"sentence": ['a "quoted" one', "two"], "label": [1, 0]})
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False, quoting=3)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    read = read_table(path)
    assert read["sentence"].tolist() == frame["sentence"].tolist()
    assert read["label"].tolist() == [1, 0]


def test_data_errors_name_the_file(tmp_path: Path, tokenizer) -> None:
    train = tmp_path / "train.csv"
    pd.DataFrame({"text": ["x"] * 50, "label": ["pos", "neg"] * 25}).to_csv(train, index=False)
    test = tmp_path / "test.csv"
    pd.DataFrame({"text": ["y"], "label": ["neutral"]}).to_csv(test, index=False)
    with pytest.raises(ValueError, match=r"test.csv: label value\(s\) \['neutral'\] are not among"):
        load_task(DataSpec(train=train, test=test, text=["text"], search_samples=10), tokenizer, 8)
    with pytest.raises(ValueError, match=r"train.csv: column\(s\) \['sentence'\] not found"):
        load_task(
            DataSpec(train=train, test=test, text=["sentence"], search_samples=10), tokenizer, 8
        )
    with pytest.raises(ValueError, match=r"cannot give a search split of 60"):
        load_task(DataSpec(train=train, test=test, text=["text"], search_samples=60), tokenizer, 8)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_table(tmp_path / "absent.tsv")
    (tmp_path / "data.xlsx").write_text("")
    with pytest.raises(ValueError, match="unsupported file type '.xlsx'"):
        read_table(tmp_path / "data.xlsx")


def test_metrics_against_hand_computed_values() -> None:
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0])
    predictions = torch.tensor([1, 1, 0, 0, 0, 1, 1, 0])  # tp 3, fn 1, fp 1, tn 3
    assert accuracy(predictions, labels) == 0.75
    assert f1(predictions, labels) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert matthews(predictions, labels) == pytest.approx((3 * 3 - 1 * 1) / 16)
    assert matthews(torch.ones(8, dtype=torch.long), labels) == 0.0  # undefined: 0
    assert chance_level("accuracy", 2) == 0.5 and chance_level("matthews", 2) == 0.0
