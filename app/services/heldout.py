"""Held-out shares: which of a dataset's tasks are kept out of fine-tuning for evaluation.

A task's place is `Task.holdout_key`, a number in [0, 1) from a hash of its instruction and
first input (`app.models.holdout_key`), written when the row is inserted. A dataset holds out the
tasks whose key is below its `held_out_share`, so the held-out set never depends on ids, insertion
order or pool size: a task stays where it is as the pool grows, and raising the share only adds
tasks to the held-out side.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from sqlmodel import col

from app.models import Dataset, Task
from app.schemas.datasets import ExportSplit

TaskSplit = Literal["train", "held_out"]


def split_of(key: float | None, share: float) -> TaskSplit:
    """The task's side; a row without a key (never expected after migration 0005) trains."""
    return "held_out" if key is not None and key < share else "train"


def split_clause(split: ExportSplit, share: float) -> sa.ColumnElement[bool]:
    """SQL for the tasks of one side of a dataset whose held-out share is `share`."""
    key = col(Task.holdout_key)
    if split == ExportSplit.held_out:
        return sa.and_(key.is_not(None), key < share)
    if split == ExportSplit.train:
        return sa.or_(key.is_(None), key >= share)
    return sa.true()


def default_evaluation_split(dataset: Dataset) -> ExportSplit:
    """Evaluations read the held-out share when the dataset keeps one; a dataset kept only for
    evaluation (a reference set imported as seeds) is evaluated whole."""
    return ExportSplit.held_out if dataset.held_out_share > 0 else ExportSplit.all
