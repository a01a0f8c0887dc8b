"""Datasets: named pools that own seeds, tasks, runs and jobs."""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from sqlmodel import Session, col, select

from app.errors import Conflict, NotFound
from app.models import Dataset, Task, TaskOrigin, TaskStatus, utcnow
from app.schemas import DatasetCreate, DatasetPublic

DEFAULT_DATASET = "default"


def get_dataset(*, session: Session, name: str) -> Dataset:
    dataset = session.exec(select(Dataset).where(Dataset.name == name)).first()
    if dataset is None:
        raise NotFound(f"Dataset '{name}' does not exist; list them with GET /v1/datasets.")
    return dataset


def create_dataset(*, session: Session, data: DatasetCreate) -> Dataset:
    if session.exec(select(Dataset.id).where(Dataset.name == data.name)).first() is not None:
        raise Conflict(f"Dataset '{data.name}' already exists; choose another name.")
    dataset = Dataset(name=data.name, description=data.description, language=data.language)
    session.add(dataset)
    session.commit()
    session.refresh(dataset)
    return dataset


def delete_dataset(*, session: Session, dataset: Dataset) -> None:
    if dataset.name == DEFAULT_DATASET:
        raise Conflict(
            "The 'default' dataset cannot be deleted; create and use another dataset instead."
        )
    session.delete(dataset)
    session.commit()


def _counts(session: Session, dataset_ids: list[int]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = defaultdict(
        lambda: {"seeds": 0, "accepted": 0, "rejected": 0}
    )
    if not dataset_ids:
        return counts
    rows = session.exec(
        select(Task.dataset_id, Task.origin, Task.status, sa.func.count())
        .where(col(Task.dataset_id).in_(dataset_ids))
        .group_by(col(Task.dataset_id), col(Task.origin), col(Task.status))
    ).all()
    for dataset_id, origin, status, n in rows:
        if origin == TaskOrigin.seed:
            counts[dataset_id]["seeds"] += n
        elif status == TaskStatus.accepted:
            counts[dataset_id]["accepted"] += n
        else:
            counts[dataset_id]["rejected"] += n
    return counts


def dataset_public(*, session: Session, dataset: Dataset) -> DatasetPublic:
    assert dataset.id is not None
    return _public(dataset, _counts(session, [dataset.id])[dataset.id])


def list_datasets(*, session: Session) -> list[DatasetPublic]:
    datasets = session.exec(select(Dataset).order_by(Dataset.name)).all()
    counts = _counts(session, [d.id for d in datasets if d.id is not None])
    return [_public(d, counts[d.id]) for d in datasets if d.id is not None]


def _public(dataset: Dataset, counts: dict[str, int]) -> DatasetPublic:
    return DatasetPublic(
        name=dataset.name,
        description=dataset.description,
        language=dataset.language,
        created_at=dataset.created_at,
        updated_at=dataset.updated_at,
        **counts,
    )


def touch(dataset: Dataset) -> None:
    dataset.updated_at = utcnow()
