"""Tasks: what a model is for. The Task protocol and its implementations, the data (files,
hub, splits, tokenization), and the training loop over a task's loss.

:func:`make_task` builds the study's task from its kind and its data.
"""

from __future__ import annotations

from typing import Literal

from autoprune.tasks.base import Direction, Task
from autoprune.tasks.classification import Classification
from autoprune.tasks.data import TaskData

TaskKind = Literal["classification"]


def make_task(kind: TaskKind, data: TaskData) -> Task:
    """The task of ``kind`` over the tokenized ``data`` (its metric, its labels)."""
    if kind == "classification":
        return Classification(metric=data.metric, num_labels=data.num_labels)
    raise ValueError(f"unknown task kind {kind!r}; known: classification")


__all__ = ["Classification", "Direction", "Task", "TaskKind", "make_task"]
