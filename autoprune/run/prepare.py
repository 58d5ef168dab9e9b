"""Prepared work: what every trial of a study shares, computed once and cached in the run.

The study's task, the dense model fine-tuned on it, the tokenized splits, the teacher's
targets on the retraining examples (when the task caches them), the importance scores and
the dense model's own scores and sizes. Each piece
is written to ``RUN/prepared/`` when computed and read back on resume; a run directory
prepared for a different model, task or recipe is refused rather than silently mixed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autoprune.engine.importance import importance
from autoprune.engine.measure import Size, measure
from autoprune.engine.models import load_tokenizer, locate
from autoprune.engine.scores import Scores
from autoprune.engine.serialize import load_pruned, save_pruned
from autoprune.run.rundir import write_atomically
from autoprune.search.spec import StudyError, StudySpec
from autoprune.tasks import Task, load_data, make_task
from autoprune.tasks.base import Batch
from autoprune.tasks.data import DataNotFoundError, Encoded, TaskData
from autoprune.tasks.train import Recipe, train

log = logging.getLogger("autoprune")


@dataclass
class DenseRecord:
    """The dense model's scores on both splits and its size: the reference of every ratio."""

    metric_search: float
    metric_test: float
    size: Size

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric_search": self.metric_search,
            "metric_test": self.metric_test,
            "size": self.size.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenseRecord:
        return cls(data["metric_search"], data["metric_test"], Size(**data["size"]))


@dataclass
class Prepared:
    """Everything a trial needs besides its PruneConfig, on the CPU.

    Attributes:
        task: What the model is for: its loss, distillation, metric and direction.
        model: The dense model, fine-tuned on the task, in eval mode.
        tokenizer: Its tokenizer.
        data: The search, test and pool splits.
        retrain_data: The pool examples retraining uses.
        teacher_targets: The dense model's targets on ``retrain_data``, row for row, for a
            task that caches them; None for one whose teacher runs online (``model``).
        scores: Importance scores of the dense model.
        dense: The dense model's metrics and size.
    """

    task: Task
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    data: TaskData
    retrain_data: Encoded
    teacher_targets: torch.Tensor | None
    scores: Scores
    dense: DenseRecord

    @property
    def teacher(self) -> torch.Tensor | PreTrainedModel:
        """What retraining distils from: the cached targets, or the dense model online."""
        return self.teacher_targets if self.teacher_targets is not None else self.model


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StudyError("device: 'cuda' was asked for, but torch sees no CUDA device")
    return torch.device(name)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def check_inputs(spec: StudySpec, directory: Path) -> None:
    """Check, in seconds, what preparing ``directory`` will read and has not cached yet,
    before minutes are spent: local data files exist, and a local or packaged model source
    is there (a hub id is not checked: that needs the network).

    Raises:
        DataNotFoundError, ModelNotFoundError: naming the key and the path.
    """
    if (directory / "fingerprint.json").is_file():
        return  # prepared: the sources are not read again
    for key, path in (("data.train", spec.data.train), ("data.test", spec.data.test)):
        if path is not None and not path.is_file():
            raise DataNotFoundError(f"{key}: data file not found: {path}")
    locate(spec.model.source)


def _check_fingerprint(directory: Path, spec: StudySpec) -> None:
    """Refuse a run directory prepared with other settings; name the keys that changed.

    ``fingerprint.json`` is written by :func:`_seal` once preparation has succeeded, so a
    start that failed (a bad model or data path) does not bind the run to its study. While
    preparing, ``fingerprint.pending.json`` names the study of the pieces cached so far: a
    restart with the same study reuses them, one with another study discards them.
    """
    current = _flatten(spec.prepared_fingerprint())
    path = directory / "fingerprint.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in current.keys() | saved.keys() if current.get(k) != saved.get(k))
        if changed:
            raise StudyError(
                f"{directory.parent} was prepared with a different study: {', '.join(changed)} "
                f"changed. Start a new run directory (--out) to use the new settings."
            )
        return
    pending = directory / "fingerprint.pending.json"
    if pending.is_file() and json.loads(pending.read_text()) != current:
        log.info("discarding the unfinished preparation of another study in %s", directory)
        shutil.rmtree(directory.resolve())  # a shared preparation: what the link points to
    directory.resolve().mkdir(parents=True, exist_ok=True)
    write_atomically(pending, lambda partial: partial.write_text(json.dumps(current, indent=2)))


def _seal(directory: Path) -> None:
    """Mark the preparation in ``directory`` finished (see :func:`_check_fingerprint`)."""
    pending = directory / "fingerprint.pending.json"
    if pending.is_file():
        pending.replace(directory / "fingerprint.json")


def _cached_tensor(path: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor cached at ``path``, or ``compute()``'s, written there atomically."""
    if path.is_file():
        return load_file(str(path))["tensor"]
    tensor = compute()
    write_atomically(path, lambda partial: save_file({"tensor": tensor.contiguous()}, str(partial)))
    return tensor


def _teacher_targets(task: Task, model: PreTrainedModel, data: Encoded) -> torch.Tensor:
    """The task's teacher targets for every example of ``data``, in order, on the CPU."""
    device = next(model.parameters()).device

    def targets(batch: Batch) -> torch.Tensor:
        return task.teacher_targets(model, {k: v.to(device) for k, v in batch.items()})

    return data.map_rows(targets)


def prepare(spec: StudySpec, directory: Path, device: torch.device) -> Prepared:
    """The study's prepared work, read from ``directory`` where cached, computed otherwise."""
    _check_fingerprint(directory, spec)
    started = time.perf_counter()
    dense_dir = directory / "dense"
    tokenizer = load_tokenizer(dense_dir if dense_dir.is_dir() else spec.model.source)

    data_dir = directory / "data"
    if data_dir.is_dir():
        data = TaskData.load(data_dir)
    else:
        log.info("reading and tokenizing the task")
        data = load_data(spec.task, spec.data, tokenizer, spec.max_length)
        write_atomically(data_dir, data.save)
    sizes = len(data.search), len(data.test), len(data.pool)
    log.info("data: %d search, %d test, %d pool examples", *sizes)
    task = make_task(spec.task, data, spec.task_settings())

    if dense_dir.is_dir():
        model, _ = load_pruned(dense_dir)
    else:
        log.info("loading model %s", spec.model.source)
        model, _ = task.load_model(spec.model.source, seed=spec.finetune.seed)
        nn.Module.to(model, device)
        if spec.finetune.steps > 0:
            ft = spec.finetune
            pool = data.pool if ft.samples is None else data.pool.subset(slice(0, ft.samples))
            log.info("fine-tuning the dense model: %d steps on %d examples", ft.steps, len(pool))
            recipe = Recipe(steps=ft.steps, batch_size=ft.batch_size, lr=ft.lr, seed=ft.seed)
            train(model, pool, recipe, task, desc="fine-tune")
        model.cpu()
        write_atomically(dense_dir, lambda partial: save_pruned(model, partial, tokenizer))
    model.eval()

    samples = spec.retrain.samples
    retrain_data = data.pool if samples is None else data.pool.subset(slice(0, samples))
    teacher_targets = None
    if task.teacher == "cached":

        def teacher() -> torch.Tensor:
            log.info("teacher targets on %d examples", len(retrain_data))
            return _teacher_targets(task, nn.Module.to(model, device), retrain_data)

        teacher_targets = _cached_tensor(directory / "teacher_targets.safetensors", teacher)

    scores_file = directory / "scores.safetensors"
    if scores_file.is_file():
        scores = Scores.load(scores_file)
    else:
        imp = spec.importance
        scoring = data.pool.subset(slice(0, imp.samples))
        log.info("importance (%s) on %d examples", imp.method, len(scoring))
        scores = importance(
            nn.Module.to(model, device),
            scoring.batches(imp.batch_size),
            imp.method,
            loss=lambda m, batch: task.loss(m, batch, reduction="sum"),
        )
        write_atomically(scores_file, scores.save)

    dense_file = directory / "dense.json"
    if dense_file.is_file():
        dense = DenseRecord.from_dict(json.loads(dense_file.read_text()))
    else:
        nn.Module.to(model, device)
        dense = DenseRecord(
            metric_search=task.evaluate(model, data.search),
            metric_test=task.evaluate(model, data.test),
            size=measure(model, spec.max_length),
        )
        record = json.dumps(dense.to_dict(), indent=2)
        write_atomically(dense_file, lambda partial: partial.write_text(record))
    model.cpu()
    _seal(directory)
    log.info(
        "prepared in %.0f s: dense %s %.4f on search, %.4f on test",
        time.perf_counter() - started,
        task.metric,
        dense.metric_search,
        dense.metric_test,
    )
    return Prepared(task, model, tokenizer, data, retrain_data, teacher_targets, scores, dense)
