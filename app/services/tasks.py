"""Reading tasks: filtered, cursor-paginated lists and single lookups."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, select

from app.errors import InvalidInput, NotFound
from app.models import Dataset, Task, TaskOrigin, TaskStatus
from app.schemas import TaskPublic, TasksPublic


@dataclass(frozen=True)
class TaskFilters:
    origin: TaskOrigin | None = None
    status: TaskStatus | None = None
    run_id: int | None = None
    is_classification: bool | None = None
    contains: str | None = None


def _decode_cursor(after: str | None) -> int:
    if after is None or after == "":
        return 0
    if not after.isdigit():
        raise InvalidInput(
            f"Cursor 'after={after}' is not valid; pass the next_cursor of the previous page."
        )
    return int(after)


def list_tasks(
    *, session: Session, dataset: Dataset, filters: TaskFilters, after: str | None, limit: int
) -> TasksPublic:
    query = select(Task).where(Task.dataset_id == dataset.id, col(Task.id) > _decode_cursor(after))
    if filters.origin is not None:
        query = query.where(Task.origin == filters.origin)
    if filters.status is not None:
        query = query.where(Task.status == filters.status)
    if filters.run_id is not None:
        query = query.where(Task.run_id == filters.run_id)
    if filters.is_classification is not None:
        query = query.where(Task.is_classification == filters.is_classification)
    if filters.contains:
        query = query.where(col(Task.instruction).icontains(filters.contains, autoescape=True))
    rows = session.exec(query.order_by(col(Task.id)).limit(limit + 1)).all()
    has_more = len(rows) > limit
    page = rows[:limit]
    return TasksPublic(
        data=[task_public(task=t, dataset_name=dataset.name) for t in page],
        has_more=has_more,
        next_cursor=str(page[-1].id) if has_more and page else None,
    )


def get_task(*, session: Session, task_id: int) -> tuple[Task, Dataset]:
    row = session.exec(
        select(Task, Dataset)
        .join(Dataset, col(Dataset.id) == Task.dataset_id)
        .where(Task.id == task_id)
    ).first()
    if row is None:
        raise NotFound(f"Task {task_id} does not exist.")
    return row[0], row[1]


def task_public(*, task: Task, dataset_name: str) -> TaskPublic:
    assert task.id is not None
    return TaskPublic(dataset=dataset_name, **task.model_dump(exclude={"dataset_id"}))
