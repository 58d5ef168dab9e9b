"""Tasks: what a model is for. The Task protocol and its implementations, the data (files,
hub, splits, tokenization), and the training loop over a task's loss.

:func:`make_task` builds the study's task from its kind and its data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from autoprune.errors import AutopruneError
from autoprune.tasks.base import Direction, Task
from autoprune.tasks.classification import Classification
from autoprune.tasks.data import TaskData

TaskKind = Literal["classification"]


class TaskError(AutopruneError, ValueError):
    """A task that does not fit the study's data or model settings."""


def _classification(data: TaskData, num_labels: int | None) -> Task:
    if num_labels is not None and num_labels != data.num_labels:
        raise TaskError(
            f"model.num_labels: {num_labels}, but the task has {data.num_labels} labels "
            f"({data.label_names}); leave model.num_labels out to use the task's"
        )
    return Classification(metric=data.metric, num_labels=data.num_labels)


TASKS: dict[TaskKind, Callable[[TaskData, int | None], Task]] = {
    "classification": _classification,
}


def make_task(kind: TaskKind, data: TaskData, num_labels: int | None = None) -> Task:
    """The task of ``kind`` over the tokenized ``data``; ``num_labels`` (the study's
    ``model.num_labels``), when set, must match the data's labels."""
    return TASKS[kind](data, num_labels)


__all__ = ["TASKS", "Classification", "Direction", "Task", "TaskError", "TaskKind", "make_task"]
