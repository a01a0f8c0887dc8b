"""Evaluations as jobs: models answer a frozen list of reference tasks, in the background.

Creating one checks everything (models, judge, dataset, references) and stores the reference
tasks as samples, so a bad request queues nothing and a later change to the dataset does not
change what is being measured. This module creates, reads, lists and cancels them; a worker
executes them (app/services/evaluation_runner.py), and their figures are computed from the
samples (app/services/evaluation_metrics.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app import leases
from app.errors import InvalidInput, NotFound
from app.llm import find_model
from app.models import (
    Dataset,
    DatasetVersion,
    Evaluation,
    EvaluationEvent,
    EvaluationSample,
    EvaluationStatus,
)
from app.schemas.common import ErrorItem
from app.schemas.datasets import ExportSplit
from app.schemas.evaluations import (
    EvaluationCreate,
    EvaluationEventPublic,
    EvaluationProgress,
    EvaluationPublic,
    ModelScore,
    PairwiseScore,
    Sample,
    SampleAnswer,
    SamplesPublic,
)
from app.services.evaluation_metrics import evaluation_progress, evaluation_results
from app.services.export import Selection, VersionPart, version_batches
from app.services.heldout import default_evaluation_split
from app.services.versions import EmptySelection, create_version, get_version
from app.settings import Settings

# --- creating ---


def _reference_version(
    session: Session, dataset: Dataset, body: EvaluationCreate, split: ExportSplit
) -> DatasetVersion | None:
    """The version the references come from: the one named, else the split's accepted tasks
    (seeds and contaminated ones too: a reference set is read whole) frozen now."""
    if body.version is not None:
        return get_version(session=session, dataset=dataset, version_id=body.version)
    selection = Selection(include_seeds=True, split=split, include_contaminated=True)
    try:
        return create_version(session=session, dataset=dataset, selection=selection, reuse=True)
    except EmptySelection:
        return None


def _references(
    session: Session, version: DatasetVersion | None, body: EvaluationCreate, split: ExportSplit
) -> list[EvaluationSample]:
    """The first `limit` tasks (oldest first) of the version's split with an output to compare
    against; each contributes its first instance that has one."""
    if version is None or version.id is None:
        return []
    wanted = set(body.task_ids) if body.task_ids is not None else None
    samples: list[EvaluationSample] = []
    part = VersionPart(version_id=version.id, split=split)
    for tasks in version_batches(engine=session.get_bind().engine, part=part):
        for task in tasks:
            if wanted is not None and task.task_id not in wanted:
                continue
            if body.origin is not None and task.origin != body.origin:
                continue
            instance = next((i for i in task.instances if i.get("output", "").strip()), None)
            if instance is None:
                continue
            samples.append(
                EvaluationSample(
                    evaluation_id=0,
                    position=len(samples),
                    task_id=task.task_id,
                    instruction=task.instruction,
                    input=instance.get("input", ""),
                    reference=instance["output"],
                )
            )
            if len(samples) >= body.limit:
                return samples
    return samples


def create_evaluation(
    *, session: Session, settings: Settings, body: EvaluationCreate
) -> Evaluation:
    """Validate, freeze the reference tasks and queue; 4xx naming the field, nothing stored."""
    engine = session.get_bind()
    entries = [
        find_model(settings, m, engine, field=f"models.{i}")  # type: ignore[arg-type]
        for i, m in enumerate(body.models)
    ]
    if len({e.id for e in entries}) != len(entries):
        raise InvalidInput(
            "models: each model may be named once.",
            errors=[ErrorItem(field="models", reason="a model is named twice")],
        )
    judge = (
        find_model(settings, body.judge, engine, field="judge")  # type: ignore[arg-type]
        if body.judge is not None
        else None
    )
    dataset = session.exec(select(Dataset).where(Dataset.name == body.dataset)).first()
    if dataset is None:
        raise NotFound(
            f"Dataset '{body.dataset}' does not exist (field `dataset`); list them with "
            "GET /v1/datasets.",
            errors=[ErrorItem(field="dataset", reason="no dataset of this name")],
        )
    split = body.split or default_evaluation_split(dataset)
    version = _reference_version(session, dataset, body, split)
    samples = _references(session, version, body, split)
    if not samples and body.version is not None:
        raise InvalidInput(
            f"Version {body.version} of dataset '{dataset.name}' has no task with a reference "
            f"output in split '{split.value}' (as frozen) to evaluate on; choose another split, "
            "task_ids, origin or version.",
            errors=[ErrorItem(field="version", reason=f"no references in split {split.value}")],
        )
    if not samples:
        raise InvalidInput(
            f"Dataset '{dataset.name}' has no accepted tasks with a reference output in split "
            f"'{split.value}' to evaluate on; import reference tasks (e.g. as seeds), set a "
            "held_out_share, or choose another split, task_ids or origin.",
            errors=[ErrorItem(field="dataset", reason=f"no references in split {split.value}")],
        )
    assert dataset.id is not None
    evaluation = Evaluation(
        dataset_id=dataset.id,
        dataset_version_id=version.id if version else None,
        models=[e.id for e in entries],
        judge=judge.id if judge else None,
        params={**body.model_dump(mode="json", exclude={"models", "judge"}), "split": split},
        status=EvaluationStatus.queued,
        tasks=len(samples),
    )
    session.add(evaluation)
    session.flush()
    assert evaluation.id is not None
    for sample in samples:
        sample.evaluation_id = evaluation.id
    session.add_all(samples)
    evaluation.progress = evaluation_progress(evaluation, samples).model_dump()
    evaluation.results = evaluation_results(evaluation, samples)
    session.add(
        EvaluationEvent(evaluation_id=evaluation.id, kind="status", data={"status": "queued"})
    )
    session.commit()
    session.refresh(evaluation)
    return evaluation


# --- reading ---


def get_evaluation(*, session: Session, evaluation_id: int) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"Evaluation {evaluation_id} does not exist.")
    return evaluation


def list_evaluations(*, session: Session, limit: int = 100) -> list[Evaluation]:
    return list(session.exec(select(Evaluation).order_by(col(Evaluation.id).desc()).limit(limit)))


def evaluation_public(*, session: Session, evaluation: Evaluation) -> EvaluationPublic:
    assert evaluation.id is not None
    dataset = session.get(Dataset, evaluation.dataset_id)
    results = evaluation.results or {}
    return EvaluationPublic(
        id=evaluation.id,
        dataset=dataset.name if dataset else "",
        status=EvaluationStatus(evaluation.status),
        models=list(evaluation.models),
        judge=evaluation.judge,
        split=ExportSplit(evaluation.params.get("split", ExportSplit.all.value)),
        version=evaluation.dataset_version_id,
        tasks=evaluation.tasks,
        progress=EvaluationProgress(**evaluation.progress),
        results=[ModelScore(**r) for r in results.get("models", [])],
        pairwise=[PairwiseScore(**p) for p in results.get("pairwise", [])],
        error=evaluation.error,
        created_at=evaluation.created_at,
        started_at=evaluation.started_at,
        finished_at=evaluation.finished_at,
    )


def list_samples(
    *, session: Session, evaluation: Evaluation, after: int, limit: int
) -> SamplesPublic:
    """Samples in task order from position `after` on (exclusive), every model's answer side by
    side."""
    rows = session.exec(
        select(EvaluationSample)
        .where(
            EvaluationSample.evaluation_id == evaluation.id,
            col(EvaluationSample.position) > after,
        )
        .order_by(col(EvaluationSample.position))
        .limit(limit + 1)
    ).all()
    page = rows[:limit]
    has_more = len(rows) > limit
    return SamplesPublic(
        data=[
            Sample(
                position=s.position,
                task_id=s.task_id,
                instruction=s.instruction,
                input=s.input,
                reference=s.reference,
                answers={m: SampleAnswer(**a) for m, a in s.answers.items()},
                pairwise=s.pairwise,
            )
            for s in page
        ],
        has_more=has_more,
        next_cursor=str(page[-1].position) if has_more and page else None,
    )


def cancel_evaluation(*, session: Session, evaluation: Evaluation) -> Evaluation:
    """Idempotent; a worker stops at its next chunk, storing nothing more."""
    result: Evaluation = leases.cancel(session, evaluation)
    return result


def events_after(engine: Engine, *, evaluation_id: int, after: int) -> list[EvaluationEvent]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(EvaluationEvent)
                .where(
                    EvaluationEvent.evaluation_id == evaluation_id,
                    col(EvaluationEvent.id) > after,
                )
                .order_by(col(EvaluationEvent.id))
                .limit(500)
            )
        )


def evaluation_status(engine: Engine, *, evaluation_id: int) -> str | None:
    with Session(engine) as session:
        return session.exec(select(Evaluation.status).where(Evaluation.id == evaluation_id)).first()


def event_public(event: EvaluationEvent) -> dict[str, Any]:
    assert event.id is not None
    return EvaluationEventPublic(
        id=event.id,
        evaluation_id=event.evaluation_id,
        kind=event.kind,
        data=event.data,
        created_at=event.created_at,
    ).model_dump(mode="json")
