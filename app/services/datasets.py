"""Datasets: named pools that own seeds, tasks, runs and jobs."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from app.errors import Conflict, NotFound
from app.models import Dataset, Task, TaskOrigin, TaskStatus
from app.schemas.datasets import DatasetCreate, DatasetPublic, DatasetUpdate, ExportSplit
from app.services.dataset_lock import lock_dataset, stamp_dataset
from app.services.decontamination import (
    check_evaluation_sets,
    refresh_dependents,
    refresh_locked,
)
from app.services.heldout import split_clause
from app.services.versions import refuse_if_in_use
from filters.language import UNKNOWN

DEFAULT_DATASET = "default"


# Built once: building the comparison and the statement's cache key on every call cost more
# than the lookup itself (about 0.1 ms), and every route under /v1/datasets/{name} makes one.
_BY_NAME = select(Dataset).where(col(Dataset.name) == sa.bindparam("name"))


def get_dataset(*, session: Session, name: str) -> Dataset:
    dataset = session.exec(_BY_NAME, params={"name": name}).first()
    if dataset is None:
        raise NotFound(f"Dataset '{name}' does not exist; list them with GET /v1/datasets.")
    return dataset


def create_dataset(*, session: Session, data: DatasetCreate) -> Dataset:
    if session.exec(select(Dataset.id).where(Dataset.name == data.name)).first() is not None:
        raise Conflict(f"Dataset '{data.name}' already exists; choose another name.")
    against = check_evaluation_sets(
        session=session,
        dataset_name=data.name,
        names=data.decontaminate_against,
        field="decontaminate_against",
    )
    dataset = Dataset(
        name=data.name,
        description=data.description,
        language=data.language,
        held_out_share=data.held_out_share,
        decontaminate_against=against,
        decontamination_threshold=data.decontamination_threshold,
    )
    session.add(dataset)
    session.commit()
    session.refresh(dataset)
    return dataset


def update_dataset(*, session: Session, dataset: Dataset, data: DatasetUpdate) -> Dataset:
    """Change settings; a changed evaluation list or threshold re-marks the tasks at once, in a
    transaction of its own after the change commits (why: app/services/decontamination.py)."""
    lock_dataset(session, dataset)
    if data.decontaminate_against is not None:
        dataset.decontaminate_against = check_evaluation_sets(
            session=session,
            dataset_name=dataset.name,
            names=data.decontaminate_against,
            field="decontaminate_against",
        )
    for name in ("description", "held_out_share", "decontamination_threshold"):
        value = getattr(data, name)
        if value is not None:
            setattr(dataset, name, value)
    stamp_dataset(session, dataset)
    session.commit()
    refresh_locked(session, dataset)
    session.refresh(dataset)
    return dataset


def delete_dataset(*, session: Session, dataset: Dataset) -> None:
    if dataset.name == DEFAULT_DATASET:
        raise Conflict(
            "The 'default' dataset cannot be deleted; create and use another dataset instead."
        )
    refuse_if_in_use(session=session, dataset=dataset)
    name = dataset.name
    session.delete(dataset)  # the dataset's row first, then its tasks (the cascade)
    session.commit()
    refresh_dependents(session, name)  # their marks naming it go


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


def _counts(session: Session, datasets: list[Dataset]) -> dict[int, dict[str, Any]]:
    dataset_ids = [d.id for d in datasets if d.id is not None]
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
    for dataset in datasets:
        assert dataset.id is not None
        counts[dataset.id].update(_quality_counts(session, dataset))
    return counts


def _quality_counts(session: Session, dataset: Dataset) -> dict[str, int]:
    """Accepted tasks held out and marked contaminated (the writes keep the marks current)."""
    accepted = (Task.dataset_id == dataset.id, Task.status == TaskStatus.accepted.value)
    marked = session.exec(select(sa.func.count()).where(*accepted, col(Task.contaminated))).one()
    held = 0
    if dataset.held_out_share > 0:
        held = session.exec(
            select(sa.func.count()).where(
                *accepted, split_clause(ExportSplit.held_out, dataset.held_out_share)
            )
        ).one()
    return {"contaminated": marked, "held_out": held}


def dataset_public(*, session: Session, dataset: Dataset) -> DatasetPublic:
    assert dataset.id is not None
    return _public(dataset, _counts(session, [dataset])[dataset.id])


def list_datasets(*, session: Session) -> list[DatasetPublic]:
    datasets = list(session.exec(select(Dataset).order_by(Dataset.name)).all())
    counts = _counts(session, datasets)
    return [_public(d, counts[d.id]) for d in datasets if d.id is not None]


def _public(dataset: Dataset, counts: dict[str, Any]) -> DatasetPublic:
    return DatasetPublic(
        name=dataset.name,
        description=dataset.description,
        language=dataset.language,
        created_at=dataset.created_at,
        updated_at=dataset.updated_at,
        held_out_share=dataset.held_out_share,
        decontaminate_against=list(dataset.decontaminate_against),
        decontamination_threshold=dataset.decontamination_threshold,
        **counts,
    )
