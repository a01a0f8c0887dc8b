"""Seed import: validate every line of a seed file, then store all of it or nothing."""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from app.errors import InvalidInput, PayloadTooLarge
from app.models import Dataset, Task, TaskOrigin, TaskStatus
from app.schemas.common import ErrorItem
from app.schemas.datasets import SeedImportResult, SeedTask
from app.services.dataset_lock import lock_dataset, stamp_dataset
from app.services.decontamination import commit_with_marks
from filters.language import detect_language

STARTER_SEEDS = "starter_seed_tasks.jsonl"
MAX_REPORTED_ERRORS = 100
# A rule between tasks, which JSON Schema cannot state; the request body's description does.
DUPLICATE_ID = "an id may appear only once in an import"


def _too_many(max_tasks: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The import has more than {max_tasks} tasks (SELFINSTRUCT_SEED_IMPORT_MAX_TASKS); "
        "split it into smaller imports. Nothing was stored.",
        errors=[ErrorItem(field="body", reason=f"more than {max_tasks} tasks")],
    )


def _validate(objects: Iterable[tuple[int, Any]], max_tasks: int) -> list[SeedTask]:
    """Validate numbered raw objects; collect every problem so the user fixes them in one pass."""
    seeds: list[SeedTask] = []
    errors: list[ErrorItem] = []
    first_line: dict[str, int] = {}
    for count, (line_no, obj) in enumerate(objects, start=1):
        if count > max_tasks:
            raise _too_many(max_tasks)
        if not isinstance(obj, dict):
            errors.append(ErrorItem(line=line_no, reason="expected a JSON object"))
            continue
        try:
            seed = SeedTask.model_validate(obj)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or None
                errors.append(ErrorItem(line=line_no, field=field, reason=err["msg"]))
            continue
        seed_id = str(seed.id)
        if seed_id in first_line:
            errors.append(
                ErrorItem(
                    line=line_no,
                    field="id",
                    reason=f"{DUPLICATE_ID} (first on line {first_line[seed_id]})",
                )
            )
            continue
        first_line[seed_id] = line_no
        seeds.append(seed)
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        raise InvalidInput(
            f"Seed import refused: {len(errors)} problem(s), first on line {errors[0].line}; "
            "nothing was stored.",
            errors=shown,
        )
    if not seeds:
        raise InvalidInput("Seed import refused: the body holds no tasks.")
    return seeds


def parse_jsonl(raw: bytes, *, max_tasks: int) -> list[SeedTask]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"Seed file is not UTF-8 (byte {exc.start}).") from exc
    lines = text.splitlines()
    if sum(1 for line in lines if line.strip()) > max_tasks:
        raise _too_many(max_tasks)  # before parsing any of it
    objects: list[tuple[int, Any]] = []
    errors: list[ErrorItem] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            objects.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(ErrorItem(line=line_no, reason=f"invalid JSON: {exc.msg}"))
    if errors:
        raise InvalidInput(
            f"Seed import refused: {len(errors)} line(s) are not JSON, first on line "
            f"{errors[0].line}; nothing was stored.",
            errors=errors[:MAX_REPORTED_ERRORS],
        )
    return _validate(objects, max_tasks)


def parse_json_array(raw: bytes, *, max_tasks: int) -> list[SeedTask]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"Body is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise InvalidInput(
            "Expected a JSON array of seed tasks; send JSONL as application/x-ndjson instead."
        )
    if len(data) > max_tasks:
        raise _too_many(max_tasks)
    return _validate(enumerate(data, start=1), max_tasks)


def import_seeds(*, session: Session, dataset: Dataset, seeds: list[SeedTask]) -> SeedImportResult:
    """Upsert by seed id in one transaction: re-posting an id replaces that seed.

    The dataset's lock comes first and the rows are stamped with its clock
    (app/services/dataset_lock.py), so runs in progress see the new and the changed seeds."""
    assert dataset.id is not None
    lock_dataset(session, dataset)
    ids = [str(s.id) for s in seeds]
    existing: dict[str, Task] = {}
    for chunk_start in range(0, len(ids), 500):
        chunk = ids[chunk_start : chunk_start + 500]
        for task in session.exec(
            select(Task).where(Task.dataset_id == dataset.id, col(Task.seed_id).in_(chunk))
        ):
            assert task.seed_id is not None
            existing[task.seed_id] = task
    stamp = stamp_dataset(session, dataset, after=[t.created_at for t in existing.values()])
    created = 0
    for seed in seeds:
        fields: dict[str, Any] = {
            "name": seed.name,
            "instruction": seed.instruction,
            "language": detect_language(seed.instruction),
            "instances": [i.model_dump() for i in seed.instances],
            "is_classification": seed.is_classification,
        }
        current = existing.get(str(seed.id))
        if current is None:
            created += 1
            session.add(
                Task(
                    dataset_id=dataset.id,
                    seed_id=str(seed.id),
                    origin=TaskOrigin.seed,
                    status=TaskStatus.accepted,
                    created_at=stamp,
                    updated_at=stamp,
                    **fields,
                )
            )
        else:
            for key, value in fields.items():
                setattr(current, key, value)
            current.updated_at = stamp
            session.add(current)
    commit_with_marks(session, dataset)
    return SeedImportResult(
        dataset=dataset.name, received=len(seeds), created=created, updated=len(seeds) - created
    )


def starter_seeds() -> list[SeedTask]:
    raw = resources.files("app").joinpath("seeds", STARTER_SEEDS).read_bytes()
    return parse_jsonl(raw, max_tasks=100_000)
