"""Datasets: named pools that own seeds, tasks, runs and jobs."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from app.errors import Conflict, NotFound
from app.models import Dataset, Task, TaskOrigin, TaskStatus, utcnow
from app.schemas import DatasetCreate, DatasetPublic
from filters.language import UNKNOWN

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


def seed_languages(session: Session, dataset_ids: list[int]) -> dict[int, dict[str, int]]:
    """Seeds per detected language, per dataset: where a pool's languages come from."""
    found: dict[int, dict[str, int]] = defaultdict(dict)
    if not dataset_ids:
        return found
    rows = session.exec(
        select(Task.dataset_id, Task.language, sa.func.count())
        .where(
            col(Task.dataset_id).in_(dataset_ids),
            Task.origin == TaskOrigin.seed.value,
            Task.status == TaskStatus.accepted.value,
        )
        .group_by(col(Task.dataset_id), col(Task.language))
    ).all()
    for dataset_id, language, n in rows:
        found[dataset_id][language or UNKNOWN] = n
    return found


def pool_languages(*, dataset: Dataset, seeds: dict[str, int]) -> dict[str, int]:
    """The languages a pool holds, with their weight: the override alone, else the seeds'
    detected languages (`unknown` left out; an empty result means any language)."""
    if dataset.language:
        return {dataset.language: 1}
    return {code: n for code, n in seeds.items() if code != UNKNOWN}


def _counts(session: Session, dataset_ids: list[int]) -> dict[int, dict[str, Any]]:
    counts: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"seeds": 0, "accepted": 0, "rejected": 0, "languages": {}}
    )
    if not dataset_ids:
        return counts
    for dataset_id, by_language in seed_languages(session, dataset_ids).items():
        total = sum(by_language.values())
        counts[dataset_id]["languages"] = {
            code: round(n / total, 4)
            for code, n in sorted(by_language.items(), key=lambda kv: -kv[1])
        }
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


def _public(dataset: Dataset, counts: dict[str, Any]) -> DatasetPublic:
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
