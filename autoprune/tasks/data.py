"""Tasks: where the examples come from, how they are split, tokenized and batched.

A task's examples come from local files (CSV, TSV, JSON lines, parquet, and plain text for
a language model) or a Hugging Face hub dataset. The task's own validation set is the
``test`` split, which the search never sees. The training set gives a ``search`` split (what
the controller optimizes) and, disjoint from it, the pool that fine-tuning, importance
scoring, screening and retraining draw from.

A classifier's examples are rows with a label (:func:`load_task`: a seeded permutation
carves the search split). A language model's are **windows**: each text is tokenized as one
stream and cut into non-overlapping windows of ``max_length`` tokens, without labels (the
targets are the tokens themselves); the search split is the training text's last windows,
the pool the ones before them (:func:`load_windows`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
import torch
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from autoprune.errors import AutopruneError
from autoprune.sections import Section
from autoprune.tasks.metrics import MetricName


class DataError(AutopruneError, ValueError):
    """A data file (or hub dataset) that cannot be used; the message names it and the row or
    column at fault."""


class DataNotFoundError(AutopruneError, FileNotFoundError):
    """A data file that does not exist, or a hub dataset that cannot be reached."""


class HubSource(Section):
    """A dataset on the Hugging Face hub (needs network, or a warm ``datasets`` cache)."""

    dataset: str = Field(description="hub dataset id, e.g. 'nyu-mll/glue'")
    config: str | None = Field(default=None, description="dataset configuration, e.g. 'sst2'")
    train_split: str = "train"
    test_split: str = "validation"


class DataSpec(Section):
    """The ``data:`` section of a study: the task's examples and its splits."""

    train: Path | None = Field(default=None, description="local training file")
    test: Path | None = Field(default=None, description="local test file (the task's dev set)")
    hub: HubSource | None = None
    text: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=2,
        description="the text column, or a pair (a classifier names them; a language model "
        "reads column 'text' of a table or hub dataset by default, and a .txt file whole)",
    )
    label: str = "label"
    labels: list[str | int] | None = Field(
        default=None, description="label values in id order; by default the sorted training labels"
    )
    metric: MetricName = "accuracy"
    search_samples: int = Field(
        default=1000, ge=10, description="examples (windows, for a language model) to search on"
    )
    search_min_words: int | None = Field(
        default=None,
        ge=1,
        description="a classifier's search split is drawn from training examples of at least "
        "this many words only, so that where the training set holds fragments (SST-2's "
        "phrases) choices are made on examples like the test set's (default: any)",
    )
    train_samples: int | None = Field(
        default=None, ge=10, description="size of the training pool (default: all the rest)"
    )
    test_samples: int | None = Field(
        default=None, ge=10, description="evaluate on the first N test examples (default: all)"
    )
    seed: int = Field(default=0, description="the classifier's split permutation")

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        local = self.train is not None or self.test is not None
        if local and self.hub is not None:
            raise ValueError("give either local files (train, test) or hub, not both")
        if not local and self.hub is None:
            raise ValueError("give the task's examples: local files (train, test) or hub")
        if local and (self.train is None or self.test is None):
            raise ValueError("local data needs both 'train' and 'test' files")
        return self


TEXT_SUFFIX = ".txt"


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, TSV, JSON (lines or records) or parquet file into a DataFrame."""
    if not path.is_file():
        raise DataNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    readers = {
        ".tsv": lambda: pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False),
        ".csv": lambda: pd.read_csv(path, keep_default_na=False),
        ".jsonl": lambda: pd.read_json(path, lines=True),
        ".json": lambda: pd.read_json(path, lines=not path.read_text().lstrip().startswith("[")),
        ".parquet": lambda: pd.read_parquet(path),
    }
    if suffix not in readers:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json, .jsonl or "
            f".parquet (plain {TEXT_SUFFIX} files are a language model's: task: language_modeling)"
        )
    try:
        return readers[suffix]()
    except Exception as error:  # pandas and pyarrow raise many kinds
        raise DataError(f"{path}: cannot be read as {suffix[1:]}: {error}") from None


def _load_frames(spec: DataSpec) -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
    """(train, test, name of the train source, name of the test source)."""
    if spec.hub is not None:
        import datasets

        hub = spec.hub
        try:
            loaded = {
                split: datasets.load_dataset(hub.dataset, hub.config, split=split).to_pandas()
                for split in (hub.train_split, hub.test_split)
            }
        except Exception as error:  # the hub raises many kinds; all mean "not available"
            raise DataNotFoundError(
                f"could not load hub dataset {hub.dataset!r} ({hub.config}): {error}. Offline? "
                f"Give local files with data.train and data.test instead."
            ) from None
        name = f"hub:{hub.dataset}/{hub.config}"
        return loaded[hub.train_split], loaded[hub.test_split], name, name
    train, test = Path(str(spec.train)), Path(str(spec.test))  # both set: DataSpec checks it
    return read_table(train), read_table(test), str(train), str(test)


@dataclass
class Encoded:
    """Tokenized examples, right-padded to one length.

    Attributes:
        input_ids: ``(examples, max_length)`` token ids.
        attention_mask: ``(examples, max_length)``, 1 on tokens, 0 on padding.
        labels: ``(examples,)`` label ids, or None for examples without labels (windows of
            text, whose targets are their own tokens).
        token_type_ids: ``(examples, max_length)`` segment ids, for models that take them.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    token_type_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, index: torch.Tensor | slice) -> Encoded:
        return Encoded(
            **{
                f.name: getattr(self, f.name)[index]
                for f in fields(self)
                if getattr(self, f.name) is not None
            }
        )

    def map_rows(
        self, fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], batch_size: int = 128
    ) -> torch.Tensor:
        """``fn`` applied to batches of similar lengths (less padding, faster), its rows put
        back in the examples' order: one row per example, on the CPU."""
        order = self.attention_mask.sum(dim=1).argsort()
        outputs = [fn(batch).cpu() for batch in self.subset(order).batches(batch_size)]
        if not outputs:
            return torch.empty(0, 0)
        rows = torch.cat(outputs)
        result = torch.empty_like(rows)
        result[order] = rows
        return result

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over the examples in batches, each trimmed to its longest example.

        ``extra`` maps names to tensors with one row per example (teacher logits, say); each
        batch carries their rows for its examples under those names.
        """
        order = (
            torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(len(self))
        )
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            length = max(int(self.attention_mask[index].sum(dim=1).max()), 1)
            batch = {
                "input_ids": self.input_ids[index, :length],
                "attention_mask": self.attention_mask[index, :length],
            }
            if self.labels is not None:
                batch["labels"] = self.labels[index]
            if self.token_type_ids is not None:
                batch["token_type_ids"] = self.token_type_ids[index, :length]
            for name, rows in (extra or {}).items():
                batch[name] = rows[index]
            yield batch

    def save(self, path: Path) -> None:
        tensors = {
            f.name: getattr(self, f.name).contiguous()
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: Path) -> Encoded:
        return cls(**load_file(str(path)))


@dataclass
class TaskData:
    """A task, tokenized and split.

    Attributes:
        search: What trials report to the controller (carved from the training set).
        test: The task's validation set: evaluated in every trial, never shown to the controller.
        pool: Training examples disjoint from ``search``: fine-tuning, importance, retraining.
        label_names: Label values in id order (none for windows of text).
    """

    search: Encoded
    test: Encoded
    pool: Encoded
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def save(self, directory: Path) -> None:
        """Write the three splits and the label names to ``directory``; :meth:`load` reads
        them back."""
        directory.mkdir(parents=True, exist_ok=True)
        for split in ("search", "test", "pool"):
            getattr(self, split).save(directory / f"{split}.safetensors")
        (directory / "labels.json").write_text(json.dumps(self.label_names))

    @classmethod
    def load(cls, directory: Path) -> TaskData:
        splits = {
            s: Encoded.load(directory / f"{s}.safetensors") for s in ("search", "test", "pool")
        }
        label_names = json.loads((directory / "labels.json").read_text())
        return cls(**splits, label_names=label_names)


def _check_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: column(s) {missing} not found; the file has {list(frame.columns)} "
            f"(set data.text and data.label in the study)"
        )


def _check_labels(frame: pd.DataFrame, label: str, source: str) -> None:
    """Every row has a label: an empty cell is an error, not a class named ``''``."""
    empty = [i + 1 for i, v in enumerate(frame[label]) if pd.isna(v) or not str(v).strip()]
    if empty:
        raise DataError(
            f"{source}: column {label!r} is empty in {len(empty)} row(s), e.g. data row(s) "
            f"{empty[:5]} (counting from 1 after the header); fill or remove them"
        )


def _label_ids(values: pd.Series, names: list[str], source: str) -> torch.Tensor:
    lookup = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for v in values} - set(lookup))
    if unknown:
        raise DataError(f"{source}: label value(s) {unknown[:5]} are not among {names}")
    return torch.tensor([lookup[str(v)] for v in values], dtype=torch.long)


def encode(
    tokenizer: PreTrainedTokenizerBase,
    frame: pd.DataFrame,
    text: list[str],
    label: str,
    label_names: list[str],
    max_length: int,
    source: str,
) -> Encoded:
    """Tokenize ``frame``'s text column(s), right-padded and truncated to ``max_length``."""
    columns = [frame[c].astype(str).tolist() for c in text]
    tokens = tokenizer(
        *columns,
        truncation=True,
        max_length=max_length,
        padding="max_length",
        return_tensors="pt",
    )
    return Encoded(
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        labels=_label_ids(frame[label], label_names, source),
        token_type_ids=tokens.get("token_type_ids"),
    )


def _search_and_pool(
    train: pd.DataFrame, order: torch.Tensor, spec: DataSpec, text: list[str], source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training rows of the search split (the first ``search_samples`` of ``order`` with
    at least ``search_min_words`` words) and of the pool (the rest, in ``order``).

    Raises:
        DataError: If too few examples have ``search_min_words`` words.
    """
    if spec.search_min_words is None:
        return order[: spec.search_samples], order[spec.search_samples :]
    words = sum(train[c].astype(str).str.split().str.len() for c in text)
    long_enough = torch.as_tensor(words.to_numpy() >= spec.search_min_words)[order]
    eligible = order[long_enough]
    if len(eligible) < spec.search_samples:
        raise DataError(
            f"{source}: only {len(eligible)} training examples have at least "
            f"{spec.search_min_words} words (data.search_min_words), fewer than the "
            f"{spec.search_samples} of data.search_samples"
        )
    search = eligible[: spec.search_samples]
    taken = torch.zeros(len(train), dtype=torch.bool)
    taken[search] = True
    return search, order[~taken[order]]


def load_task(spec: DataSpec, tokenizer: PreTrainedTokenizerBase, max_length: int) -> TaskData:
    """Read, split and tokenize a classification task; the same ``spec`` always gives the
    same splits."""
    if spec.text is None:
        raise DataError("data.text: name the column (or the pair of columns) holding the text")
    train, test, train_source, test_source = _load_frames(spec)
    _check_columns(train, [*spec.text, spec.label], train_source)
    _check_columns(test, [*spec.text, spec.label], test_source)
    _check_labels(train, spec.label, train_source)
    _check_labels(test, spec.label, test_source)
    names = (
        [str(v) for v in spec.labels]
        if spec.labels
        else sorted({str(v) for v in train[spec.label]})
    )
    if len(names) < 2:
        raise DataError(f"{train_source}: column {spec.label!r} has fewer than 2 label values")
    if len(train) <= spec.search_samples:
        raise DataError(
            f"{train_source}: {len(train)} training examples cannot give a search split of "
            f"{spec.search_samples} (data.search_samples) and a training pool"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(spec.seed))
    search_rows, pool_rows = _search_and_pool(train, order, spec, spec.text, train_source)
    if spec.train_samples is not None:
        pool_rows = pool_rows[: spec.train_samples]
    if spec.test_samples is not None:
        test = test.iloc[: spec.test_samples]

    text = spec.text

    def tokenized(frame: pd.DataFrame, source: str) -> Encoded:
        return encode(tokenizer, frame, text, spec.label, names, max_length, source)

    return TaskData(
        search=tokenized(train.iloc[search_rows.numpy()], train_source),
        test=tokenized(test, test_source),
        pool=tokenized(train.iloc[pool_rows.numpy()], train_source),
        label_names=names,
    )


DEFAULT_TEXT_COLUMN = "text"


def _joined(frame: pd.DataFrame, column: str, source: str) -> str:
    """The column's rows as one text, one row a line."""
    _check_columns(frame, [column], source)
    return "\n".join(frame[column].astype(str))


def _read_text(path: Path, column: str) -> str:
    """A ``.txt`` file whole, or a table's ``column``, one row a line."""
    if path.suffix.lower() != TEXT_SUFFIX:
        return _joined(read_table(path), column, str(path))
    if not path.is_file():
        raise DataNotFoundError(f"data file not found: {path}")
    return path.read_text(encoding="utf-8")


def _texts(spec: DataSpec) -> tuple[tuple[str, str], tuple[str, str]]:
    """``(text, source)`` of the training and of the test data."""
    if spec.text is not None and len(spec.text) > 1:
        raise DataError(f"data.text: a language model reads one text column, got {spec.text}")
    column = spec.text[0] if spec.text else DEFAULT_TEXT_COLUMN
    if spec.hub is not None:
        train, test, name, _ = _load_frames(spec)
        return (_joined(train, column, name), name), (_joined(test, column, name), name)
    train_path, test_path = Path(str(spec.train)), Path(str(spec.test))  # DataSpec checks both
    return (
        (_read_text(train_path, column), str(train_path)),
        (_read_text(test_path, column), str(test_path)),
    )


def windows(tokenizer: PreTrainedTokenizerBase, text: str, length: int, source: str) -> Encoded:
    """``text`` tokenized as one stream (no special tokens added) and cut into consecutive,
    non-overlapping windows of ``length`` tokens, without labels; the tail too short for a
    window is left out."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    count = len(ids) // length
    if count == 0:
        raise DataError(
            f"{source}: its {len(ids)} tokens do not fill one window of {length} (max_length)"
        )
    stream = torch.tensor(ids[: count * length], dtype=torch.long)
    input_ids = stream.view(count, length)  # (windows, length)
    return Encoded(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))


def load_windows(spec: DataSpec, tokenizer: PreTrainedTokenizerBase, max_length: int) -> TaskData:
    """Read and tokenize a language-modelling task as windows of ``max_length`` tokens.

    The test split is the test text's first ``test_samples`` windows (all by default). The
    training text's last ``search_samples`` windows are the search split and the windows
    before them the pool (its first ``train_samples``), so the splits never share a window
    and an article rarely falls on both sides of the search split's edge.
    """
    (train_text, train_source), (test_text, test_source) = _texts(spec)
    train = windows(tokenizer, train_text, max_length, train_source)
    test = windows(tokenizer, test_text, max_length, test_source)
    if len(train) <= spec.search_samples:
        raise DataError(
            f"{train_source}: {len(train)} windows of {max_length} tokens cannot give a search "
            f"split of {spec.search_samples} (data.search_samples) and a training pool"
        )
    edge = len(train) - spec.search_samples
    pool_end = edge if spec.train_samples is None else min(edge, spec.train_samples)
    if spec.test_samples is not None:
        test = test.subset(slice(0, spec.test_samples))
    return TaskData(
        search=train.subset(slice(edge, None)),
        test=test,
        pool=train.subset(slice(0, pool_end)),
        label_names=[],
    )
