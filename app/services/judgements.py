"""Judgements: the judge model check and judgement jobs (create, read, list, cancel); the
rating filters the task browser, stats and exports share are in app/services/ratings.py.

A judgement job is a run of strategy `judgement` (app/pipeline/judging.py executes it): the
embedded worker and `selfinstruct worker` claim it with the runs' lease, so it survives a kill
and resumes where its stored judgements end; its progress is the run's counters and its event
stream the run's.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from app.errors import NotFound
from app.llm import ModelEntry, find_model
from app.models import (
    MACHINE_ORIGINS,
    Dataset,
    Run,
    RunEvent,
    RunStatus,
    Task,
)
from app.run_schemas import (
    JUDGEMENT_STRATEGY,
    JudgementJobCreate,
    JudgementJobPublic,
    JudgementProgress,
)
from app.schemas import ErrorItem
from app.services.runs import cancel_run
from app.settings import Settings
from generators.judge import RATINGS


def check_judge_model(
    settings: Settings, model_id: str, engine: Engine | None, *, field: str
) -> ModelEntry:
    """The catalogue entry of a judge. An unknown id is a 404 naming `field`, as an unknown
    run model is: the request is well formed (the schema cannot list models that come and go
    with fine-tunes), the model it names does not exist."""
    return find_model(settings, model_id, engine, field=field)


# --- jobs -----------------------------------------------------------------------------------------


def job_task_query(
    dataset_id: int, params: JudgementJobCreate, max_task_id: int
) -> list[sa.ColumnElement[bool]]:
    """The tasks a job judges, as SQL conditions (frozen at creation by `max_task_id`)."""
    clauses: list[sa.ColumnElement[bool]] = [
        col(Task.dataset_id) == dataset_id,
        col(Task.id) <= max_task_id,
    ]
    if params.status != "any":
        clauses.append(col(Task.status) == params.status)
    if params.origin == "machine":
        clauses.append(col(Task.origin).in_(MACHINE_ORIGINS))
    elif params.origin is not None:
        clauses.append(col(Task.origin) == params.origin)
    if params.run_id is not None:
        clauses.append(col(Task.run_id) == params.run_id)
    if params.select == "unjudged":
        clauses.append(col(Task.rating).is_(None))
    return clauses


def create_job(
    *, session: Session, settings: Settings, dataset: Dataset, body: JudgementJobCreate
) -> Run:
    """Queue a judgement job over the tasks that match now; tasks added later are not in it."""
    entry = check_judge_model(settings, body.model, session.get_bind(), field="model")  # type: ignore[arg-type]
    assert dataset.id is not None
    if body.run_id is not None:
        run = session.get(Run, body.run_id)
        if run is None or run.dataset_id != dataset.id:
            raise NotFound(
                f"run_id: run {body.run_id} is not a run of dataset '{dataset.name}'.",
                errors=[ErrorItem(field="run_id", reason="not a run of this dataset")],
            )
    max_task_id = int(
        session.exec(
            select(func.coalesce(func.max(Task.id), 0)).where(Task.dataset_id == dataset.id)
        ).one()
        or 0
    )
    total = session.exec(
        select(func.count()).select_from(Task).where(*job_task_query(dataset.id, body, max_task_id))
    ).one()
    job = Run(
        dataset_id=dataset.id,
        strategy=JUDGEMENT_STRATEGY,
        backend=entry.backend,
        model=entry.id,
        params={**body.model_dump(mode="json"), "max_task_id": max_task_id},
        target=total,
        status=RunStatus.queued,
    )
    session.add(job)
    session.flush()
    assert job.id is not None
    session.add(RunEvent(run_id=job.id, kind="status", data={"status": RunStatus.queued.value}))
    session.commit()
    session.refresh(job)
    return job


def get_job(*, session: Session, job_id: int) -> Run:
    job = session.get(Run, job_id)
    if job is None or job.strategy != JUDGEMENT_STRATEGY:
        raise NotFound(f"Judgement job {job_id} does not exist.")
    return job


def list_jobs(*, session: Session, dataset: Dataset) -> list[Run]:
    return list(
        session.exec(
            select(Run)
            .where(Run.dataset_id == dataset.id, Run.strategy == JUDGEMENT_STRATEGY)
            .order_by(col(Run.id).desc())
        )
    )


def cancel_job(*, session: Session, job: Run) -> Run:
    """Idempotent; judgements already stored stay (they are real ratings)."""
    return cancel_run(session=session, run=job)


def job_public(*, job: Run, dataset_name: str) -> JudgementJobPublic:
    assert job.id is not None
    ratings = {r: n for r, n in job.state.get("ratings", {}).items() if r in RATINGS}
    filters = {k: v for k, v in job.params.items() if k not in ("model",)}
    return JudgementJobPublic(
        id=job.id,
        dataset=dataset_name,
        status=RunStatus(job.status),
        model=job.model,
        filters=filters,
        progress=JudgementProgress(
            total=job.target,
            done=job.candidates,
            judged=job.accepted,
            unjudged=job.rejected,
            failed_requests=job.failed_requests,
            ratings=ratings,
            requests=job.requests,
            prompt_tokens=job.prompt_tokens,
            completion_tokens=job.completion_tokens,
        ),
        stop_reason=job.state.get("stop_reason"),
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
