"""Dataset versions: freeze which tasks, in which state and on which side of the held-out split,
an export, a fine-tune or an evaluation used, so it can be named (id, content hash) and read
again byte for byte whatever the pool did since.

A version stores the tasks' content, not their ids: tasks get edited, rejected and re-judged.
Creating one reads the selection on a connection of its own and compresses it in memory, then
writes the version in one short transaction, so a long freeze never holds the database's write
lock while runs are storing tasks (SQLite has one writer at a time).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlmodel import Session, col, select

from app.errors import Conflict, InvalidInput, NotFound
from app.models import (
    Dataset,
    DatasetVersion,
    DatasetVersionChunk,
    Evaluation,
    EvaluationStatus,
    FineTuningJobRow,
    JobStatus,
    Run,
    Task,
)
from app.schemas.common import ErrorItem
from app.schemas.datasets import ExportSplit
from app.schemas.versions import LeaveOut, VersionCounts, VersionPublic, VersionSelection
from app.services.export import Selection, VersionPart, row_batches, selection_clauses
from app.services.frozen import TASKS_PER_CHUNK, canonical_line, compress, decode_chunk
from app.services.heldout import split_of
from filters.language import UNKNOWN

SELECTION_FIELDS = ("include_seeds", "split", "min_rating", "include_contaminated")
DERIVED = ("from_version", "leave_out")  # what a version cut from another records beside
# What an ablation groups a version's tasks by, read from each frozen record.
GROUPINGS: dict[str, Any] = {
    "strategy": lambda r: r["strategy"] or "none",
    "origin": lambda r: r["origin"],
    "run": lambda r: "none" if r["run_id"] is None else str(r["run_id"]),
    "language": lambda r: r["language"] or UNKNOWN,
    "rating": lambda r: r["rating"] or "not_rated",
}


class EmptySelection(InvalidInput):
    """The selection holds no task: there is nothing to freeze."""


@dataclass
class _Frozen:
    """A version's content as it is read: compressed chunks, the running hash and the counts."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    sha256: Any = field(default_factory=hashlib.sha256)
    tasks: int = 0
    instances: int = 0
    stored_bytes: int = 0
    counts: dict[str, Counter[str]] = field(
        default_factory=lambda: {k: Counter() for k in VersionCounts.model_fields}
    )

    def add(self, record: dict[str, Any]) -> None:
        self.lines.append(canonical_line(record))
        self.tasks += 1
        self.instances += len(record["instances"])
        counts = self.counts
        counts["origin"][record["origin"]] += 1
        counts["strategy"][record["strategy"] or "none"] += 1
        counts["language"][record["language"] or UNKNOWN] += 1
        counts["rating"][record["rating"] or "not_rated"] += 1
        counts["split"][record["split"]] += 1
        if len(self.lines) >= TASKS_PER_CHUNK:
            self.seal()

    def seal(self) -> None:
        """Close the current chunk: hash its lines and compress them."""
        if not self.lines:
            return
        raw = b"".join(self.lines)
        self.sha256.update(raw)
        data = compress(raw)
        self.stored_bytes += len(data)
        self.chunks.append(
            {
                "position": len(self.chunks),
                "tasks": len(self.lines),
                "raw_bytes": len(raw),
                "data": data,
            }
        )
        self.lines = []


def _frozen_query(*, dataset: Dataset, selection: Selection) -> sa.Select:  # type: ignore[type-arg]
    """The selected tasks with every property a version keeps, oldest first."""
    assert dataset.id is not None
    return (
        sa.select(
            col(Task.id),
            col(Task.seed_id),
            col(Task.name),
            col(Task.instruction),
            sa.cast(col(Task.instances), sa.Text).label("instances"),
            col(Task.is_classification),
            col(Task.origin),
            col(Task.status),
            col(Task.language),
            col(Task.rating),
            col(Task.run_id),
            col(Run.strategy),
            col(Task.holdout_key),
            col(Task.contaminated),
        )
        .select_from(Task)
        .outerjoin(Run, col(Run.id) == col(Task.run_id))
        .where(
            *selection_clauses(
                dataset_id=dataset.id, selection=selection, held_out_share=dataset.held_out_share
            )
        )
        .order_by(col(Task.id))
    )


def _freeze(session: Session, dataset: Dataset, selection: Selection) -> _Frozen:
    frozen, share = _Frozen(), dataset.held_out_share
    engine = session.get_bind().engine
    with engine.connect() as conn:
        for rows in row_batches(conn, _frozen_query(dataset=dataset, selection=selection)):
            for (
                task_id, seed_id, name, instruction, instances, is_classification, origin,
                status, language, rating, run_id, strategy, key, contaminated,
            ) in rows:  # fmt: skip
                frozen.add(
                    {
                        "task_id": task_id,
                        "seed_id": seed_id,
                        "name": name,
                        "instruction": instruction,
                        "instances": orjson.loads(instances) if instances else [],
                        # The raw SQLite cursor gives 0/1 for booleans.
                        "is_classification": (
                            None if is_classification is None else bool(is_classification)
                        ),
                        "origin": origin,
                        "status": status,
                        "language": language,
                        "rating": rating,
                        "run_id": run_id,
                        "strategy": strategy,
                        "split": split_of(key, share),
                        "holdout_key": key,
                        "contaminated": bool(contaminated),
                    }
                )
    frozen.seal()
    return frozen


def version_records(session: Session, version: DatasetVersion) -> Iterator[dict[str, Any]]:
    """A version's frozen records, in order."""
    query = (
        sa.select(col(DatasetVersionChunk.data), col(DatasetVersionChunk.raw_bytes))
        .where(col(DatasetVersionChunk.version_id) == version.id)
        .order_by(col(DatasetVersionChunk.position))
    )
    for data, raw_bytes in session.execute(query).all():
        yield from decode_chunk(bytes(data), raw_bytes)


def version_groups(session: Session, version: DatasetVersion, grouping: str) -> Counter[str]:
    """Train-side tasks of the version per group of `grouping` (what a fine-tune trains on)."""
    key = GROUPINGS[grouping]
    return Counter(key(r) for r in version_records(session, version) if r["split"] == "train")


def _refreeze(session: Session, source: DatasetVersion, leave_out: tuple[str, str]) -> _Frozen:
    """The source version's records less those of one group, frozen again as they were."""
    frozen, (grouping, value) = _Frozen(), leave_out
    key = GROUPINGS[grouping]
    for record in version_records(session, source):
        if key(record) != value:
            frozen.add(record)
    frozen.seal()
    return frozen


def _empty(dataset: Dataset, selection: Selection) -> EmptySelection:
    chosen = ", ".join(f"{k}={v}" for k, v in selection.as_dict().items())
    return EmptySelection(
        f"The selection holds no task of dataset '{dataset.name}' ({chosen}), so there is "
        "nothing to freeze; widen it (include_seeds, split, min_rating, include_contaminated) "
        "or grow the dataset first.",
        errors=[ErrorItem(field=name, reason="selects no task") for name in SELECTION_FIELDS],
    )


def create_version(
    *,
    session: Session,
    dataset: Dataset,
    selection: Selection,
    tag: str | None = None,
    reuse: bool = False,
    source: DatasetVersion | None = None,
    leave_out: tuple[str, str] | None = None,
) -> DatasetVersion:
    """Freeze the selection as a new version and commit it. With `reuse`, an existing version of
    the same selection and content (equal hash) is returned instead of a copy: what fine-tunes
    and evaluations do, so jobs on an unchanged pool share one version. EmptySelection (422)
    when nothing is selected.

    With `source` and `leave_out` (grouping, value), the version is the source version's
    records less one group (what an ablation trains on), not a read of the live pool: the
    comparison then differs by that group only, whatever the pool did since; its selection
    records the source's, `from_version` and `leave_out`."""
    assert dataset.id is not None
    if source is not None and leave_out is not None:
        frozen = _refreeze(session, source, leave_out)
        chosen = {
            **source.selection,
            "from_version": source.id,
            "leave_out": {"grouping": leave_out[0], "value": leave_out[1]},
        }
        share = source.held_out_share
    else:
        frozen = _freeze(session, dataset, selection)
        chosen, share = selection.as_dict(), dataset.held_out_share
    if frozen.tasks == 0:
        raise _empty(dataset, selection)
    content_sha256 = frozen.sha256.hexdigest()
    if reuse:
        same = session.exec(
            select(DatasetVersion)
            .where(
                DatasetVersion.dataset_id == dataset.id,
                DatasetVersion.content_sha256 == content_sha256,
            )
            .order_by(col(DatasetVersion.id).desc())
        ).all()
        for version in same:
            if version.selection == chosen and version.held_out_share == share:
                return version
    version = DatasetVersion(
        dataset_id=dataset.id,
        tag=tag,
        selection=chosen,
        held_out_share=share,
        tasks=frozen.tasks,
        instances=frozen.instances,
        content_sha256=content_sha256,
        counts={name: dict(sorted(c.items())) for name, c in frozen.counts.items()},
        stored_bytes=frozen.stored_bytes,
    )
    session.add(version)
    session.flush()
    session.execute(
        sa.insert(DatasetVersionChunk),
        [chunk | {"version_id": version.id} for chunk in frozen.chunks],
    )
    session.commit()
    session.refresh(version)
    return version


def get_version(
    *, session: Session, dataset: Dataset, version_id: int, field: str = "version"
) -> DatasetVersion:
    version = session.get(DatasetVersion, version_id)
    if version is None or version.dataset_id != dataset.id:
        raise NotFound(
            f"Version {version_id} of dataset '{dataset.name}' does not exist; list them with "
            f"GET /v1/datasets/{dataset.name}/versions.",
            errors=[ErrorItem(field=field, reason="no version of this dataset with this id")],
        )
    return version


def list_versions(*, session: Session, dataset: Dataset) -> list[DatasetVersion]:
    """Newest first."""
    return list(
        session.exec(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == dataset.id)
            .order_by(col(DatasetVersion.id).desc())
        )
    )


def version_public(*, version: DatasetVersion, dataset: Dataset) -> VersionPublic:
    assert version.id is not None
    return VersionPublic(
        id=version.id,
        dataset=dataset.name,
        tag=version.tag,
        selection=VersionSelection(
            **{k: v for k, v in version.selection.items() if k not in DERIVED}
        ),
        from_version=version.selection.get("from_version"),
        leave_out=(
            LeaveOut(**version.selection["leave_out"])
            if version.selection.get("leave_out")
            else None
        ),
        held_out_share=version.held_out_share,
        tasks=version.tasks,
        instances=version.instances,
        content_sha256=version.content_sha256,
        counts=VersionCounts(**version.counts),
        stored_bytes=version.stored_bytes,
        created_at=version.created_at,
    )


def export_source(
    *,
    session: Session,
    dataset: Dataset,
    version_id: int | None,
    selection: Selection,
    split: ExportSplit | None,
) -> Selection | VersionPart:
    """What an export reads: the live pool by `selection` (split default `train`), or a
    version's frozen tasks (split default `all`: the whole version). A version fixes its own
    selection, so asking for another one with it is refused, naming the field."""
    if version_id is None:
        return Selection(
            include_seeds=selection.include_seeds,
            split=split or ExportSplit.train,
            include_contaminated=selection.include_contaminated,
            min_rating=selection.min_rating,
        )
    version = get_version(session=session, dataset=dataset, version_id=version_id)
    default = Selection()
    for name in ("include_seeds", "include_contaminated", "min_rating"):
        if getattr(selection, name) != getattr(default, name):
            raise InvalidInput(
                f"{name} cannot be combined with version={version_id}: a version keeps the "
                "selection it was made with; leave it out, or export the live pool.",
                errors=[ErrorItem(field=name, reason="not with version")],
            )
    assert version.id is not None
    return VersionPart(version_id=version.id, split=split or ExportSplit.all)


def version_for_training(*, session: Session, dataset: Dataset) -> DatasetVersion | None:
    """The version a fine-tune from a dataset trains on when none is named: seeds and accepted
    tasks outside the held-out share, contaminated ones left out; None when there are none."""
    try:
        return create_version(
            session=session,
            dataset=dataset,
            selection=Selection(include_seeds=True, split=ExportSplit.train),
            reuse=True,
        )
    except EmptySelection:
        return None


# --- versions in use ---

ACTIVE_JOBS = (JobStatus.validating_files.value, JobStatus.queued.value, JobStatus.running.value)
ACTIVE_EVALUATIONS = (EvaluationStatus.queued.value, EvaluationStatus.running.value)


def refuse_if_in_use(*, session: Session, dataset: Dataset) -> None:
    """409 naming the jobs when a queued or running fine-tune or evaluation uses one of the
    dataset's versions: deleting it would pull the data from under them."""
    ids = select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset.id)
    users = [
        f"fine-tune job {job_id} ({status}, version {version_id})"
        for job_id, version_id, status in session.exec(
            select(
                FineTuningJobRow.id, FineTuningJobRow.dataset_version_id, FineTuningJobRow.status
            ).where(
                col(FineTuningJobRow.dataset_version_id).in_(ids),
                col(FineTuningJobRow.status).in_(ACTIVE_JOBS),
            )
        )
    ] + [
        f"evaluation {evaluation_id} ({status}, version {version_id})"
        for evaluation_id, version_id, status in session.exec(
            select(Evaluation.id, Evaluation.dataset_version_id, Evaluation.status).where(
                col(Evaluation.dataset_version_id).in_(ids),
                col(Evaluation.status).in_(ACTIVE_EVALUATIONS),
            )
        )
    ]
    if users:
        raise Conflict(
            f"Dataset '{dataset.name}' has versions in use by {', '.join(users)}; cancel them "
            "or wait for them to finish, then delete it. Nothing was deleted.",
            errors=[ErrorItem(field="name", reason=user) for user in users],
        )
