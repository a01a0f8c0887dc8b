"""The dataset row lock and the dataset's change clock: how writers of a dataset's tasks keep
out of each other's way, and how readers that keep a copy (runs, decontamination) find every
change.

The lock order (docs/DECISIONS.md): a transaction that writes a dataset's tasks takes the
dataset's row first (a write to it: PostgreSQL's row lock, SQLite's database write lock), then
task rows, and holds one dataset's row at a time; work on another dataset (the marks of datasets
that name this one as an evaluation set) runs after the commit, in a transaction of its own. So
runs, imports, edits, reviews and decontamination never deadlock, and the ids of a dataset's
tasks commit in the order they were drawn (each insert draws and commits under the lock).

The clock is `dataset.updated_at`. A write that adds tasks by hand or changes stored ones (new
text, a new status) moves it, under the lock, strictly past its last value and past the rows it
changes, and stamps those rows with it. A reader that holds the lock and remembers the clock it
last saw finds every change since with `updated_at > seen AND updated_at > created_at`, whatever
the writers' own clocks say. Rows a run inserts keep `updated_at == created_at` and leave the
clock alone (a run commits twice a second; moving the clock would make every other run look for
changes each time): they are found by id, which the lock keeps in commit order.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col

from app.errors import NotFound
from app.models import Dataset, Task, utcnow

TICK = timedelta(microseconds=1)  # the databases keep microseconds


def lock(session: Session, dataset_id: int) -> datetime:
    """Take the dataset's row lock (a no-op write) and return its clock."""
    clock = (
        session.connection()
        .execute(
            sa.update(Dataset)
            .where(col(Dataset.id) == dataset_id)
            .values(updated_at=Dataset.updated_at)
            .returning(col(Dataset.updated_at))
        )
        .scalar()
    )
    if clock is None:
        raise NotFound(f"Dataset {dataset_id} was deleted meanwhile.")
    return clock


def lock_dataset(session: Session, dataset: Dataset) -> None:
    """`lock`, then read the dataset again: what was read before the lock may be stale."""
    assert dataset.id is not None
    lock(session, dataset.id)
    session.refresh(dataset)


def stamp_dataset(
    session: Session, dataset: Dataset, *, after: Iterable[datetime] = ()
) -> datetime:
    """Move the clock of a locked dataset past its last value and past `after` (the creation
    times of the rows this write changes); the result is the stamp those rows get."""
    stamp = max([utcnow(), dataset.updated_at + TICK, *(t + TICK for t in after)])
    dataset.updated_at = stamp
    session.add(dataset)
    return stamp


def changed_since(seen: datetime) -> sa.ColumnElement[bool]:
    """Tasks a write changed after the clock read `seen` (see the module docstring)."""
    return sa.and_(col(Task.updated_at) > seen, col(Task.updated_at) > col(Task.created_at))
