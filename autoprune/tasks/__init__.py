"""Tasks: what a model is for. The Task protocol and its implementations, the data (files,
hub, splits, tokenization), and the training loop over a task's loss.

A study names its task's kind; :data:`TASKS` says, per kind, how its data are read
(:func:`load_data`) and how the task is built over them (:func:`make_task`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from autoprune.errors import AutopruneError
from autoprune.tasks.base import Direction, Task, TeacherMode
from autoprune.tasks.classification import Classification
from autoprune.tasks.data import DataSpec, TaskData, load_task, load_windows
from autoprune.tasks.language_modeling import DEFAULT_TOP_K, LanguageModeling
from autoprune.tasks.metrics import MetricName

TaskKind = Literal["classification", "language_modeling"]


class TaskError(AutopruneError, ValueError):
    """A task that does not fit the study's data or model settings."""


@dataclass(frozen=True)
class TaskSettings:
    """What a study says about its task besides its data; each kind reads its own.

    Attributes:
        metric: A classifier's metric (``data.metric``).
        num_labels: A classifier's label count (``model.num_labels``); must match the data.
        reference: A language model's perplexity cap (``objectives.reference``).
        teacher: Where the dense model's targets come from (``retrain.teacher``); None: the
            task's default.
        top_k: A language model's teacher tokens per position (``retrain.top_k``); None:
            the task's default.
    """

    metric: MetricName = "accuracy"
    num_labels: int | None = None
    reference: float | None = None
    teacher: TeacherMode | None = None
    top_k: int | None = None


def _classification(data: TaskData, settings: TaskSettings) -> Task:
    num_labels = settings.num_labels
    if num_labels is not None and num_labels != data.num_labels:
        raise TaskError(
            f"model.num_labels: {num_labels}, but the task has {data.num_labels} labels "
            f"({data.label_names}); leave model.num_labels out to use the task's"
        )
    return Classification(metric=settings.metric, num_labels=data.num_labels)


def _language_modeling(data: TaskData, settings: TaskSettings) -> Task:
    if settings.reference is None:
        raise TaskError(
            "objectives.reference: a language model's hypervolume counts from a stated "
            "perplexity cap; give one (e.g. 200)"
        )
    return LanguageModeling(
        reference=settings.reference,
        teacher=settings.teacher or "cached",
        top_k=settings.top_k or DEFAULT_TOP_K,
    )


Loader = Callable[[DataSpec, PreTrainedTokenizerBase, int], TaskData]


@dataclass(frozen=True)
class TaskType:
    """One kind of task: how its data are read (``load(spec, tokenizer, max_length)``) and how
    the task is built over them (``build(data, settings)``)."""

    load: Loader
    build: Callable[[TaskData, TaskSettings], Task]


TASKS: dict[TaskKind, TaskType] = {
    "classification": TaskType(load_task, _classification),
    "language_modeling": TaskType(load_windows, _language_modeling),
}


def load_data(
    kind: TaskKind, spec: DataSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> TaskData:
    """The study's data, read, split and tokenized as a task of ``kind`` reads them."""
    return TASKS[kind].load(spec, tokenizer, max_length)


def make_task(kind: TaskKind, data: TaskData, settings: TaskSettings | None = None) -> Task:
    """The task of ``kind`` over the tokenized ``data``, as ``settings`` say.

    Raises:
        TaskError: If the settings do not fit the data (a label count), or a setting the
            kind needs is missing (a language model's reference).
    """
    return TASKS[kind].build(data, settings or TaskSettings())


__all__ = [
    "TASKS",
    "Classification",
    "Direction",
    "LanguageModeling",
    "Task",
    "TaskError",
    "TaskKind",
    "TaskSettings",
    "TaskType",
    "load_data",
    "make_task",
]
