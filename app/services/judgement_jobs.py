"""Judgement jobs (create, read, list, cancel, events); a judge is looked up in
the model catalogue like any model (`app.llm.find_model`). The rating filters the task browser,
stats and exports share are in app/services/ratings.py.

A judgement job is a job of its own kind (`JudgementJob`; app/pipeline/judgement_job.py
executes it): generation workers, embedded or `selfinstruct worker`, claim it with the lease
every job kind has, so it survives a kill and resumes where its stored judgements end. It is
not a run: it neither shows in a dataset's runs nor counts toward their limit.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from app import leases
from app.errors import NotFound
from app.llm import find_model
from app.models import (
    MACHINE_ORIGINS,
    Dataset,
    JudgementEvent,
    JudgementJob,
    Run,
    RunStatus,
    Task,
)
from app.schemas.common import ErrorItem
from app.schemas.judging import (
    JudgementEventPublic,
    JudgementJobCreate,
    JudgementJobPublic,
    JudgementProgress,
)
from app.settings import Settings
from generators.judge_prompts import RATINGS

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
) -> JudgementJob:
    """Queue a judgement job over the tasks that match now; tasks added later are not in it."""
    entry = find_model(settings, body.model, session.get_bind(), field="model")  # type: ignore[arg-type]
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
    job = JudgementJob(
        dataset_id=dataset.id,
        backend=entry.backend,
        model=entry.id,
        params={**body.model_dump(mode="json"), "max_task_id": max_task_id},
        total=total,
        status=RunStatus.queued,
    )
    session.add(job)
    session.flush()
    assert job.id is not None
    session.add(
        JudgementEvent(
            judgement_job_id=job.id, kind="status", data={"status": RunStatus.queued.value}
        )
    )
    session.commit()
    session.refresh(job)
    return job


def get_job(*, session: Session, job_id: int) -> JudgementJob:
    job = session.get(JudgementJob, job_id)
    if job is None:
        raise NotFound(f"Judgement job {job_id} does not exist.")
    return job


def list_jobs(*, session: Session, dataset: Dataset) -> list[JudgementJob]:
    return list(
        session.exec(
            select(JudgementJob)
            .where(JudgementJob.dataset_id == dataset.id)
            .order_by(col(JudgementJob.id).desc())
        )
    )


def cancel_job(*, session: Session, job: JudgementJob) -> JudgementJob:
    """Idempotent; judgements already stored stay (they are real ratings). The worker sees the
    status at its next commit or lease renewal and stops."""
    result: JudgementJob = leases.cancel(session, job)
    return result


def progress(job: JudgementJob) -> JudgementProgress:
    """The counters as the API shows them, so the stream and GET never disagree."""
    return JudgementProgress(
        total=job.total,
        done=job.done,
        judged=job.judged,
        unjudged=job.unjudged,
        failed_requests=job.failed_requests,
        ratings={r: n for r, n in job.ratings.items() if r in RATINGS and n},
        requests=job.requests,
        prompt_tokens=job.prompt_tokens,
        completion_tokens=job.completion_tokens,
    )


def job_public(*, job: JudgementJob, dataset_name: str) -> JudgementJobPublic:
    assert job.id is not None
    filters = {k: v for k, v in job.params.items() if k not in ("model",)}
    return JudgementJobPublic(
        id=job.id,
        dataset=dataset_name,
        status=RunStatus(job.status),
        model=job.model,
        filters=filters,
        progress=progress(job),
        stop_reason=job.stop_reason,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


# --- the event stream -----------------------------------------------------------------------------


def events_after(
    engine: Engine, *, job_id: int, after: int, limit: int = 500
) -> list[JudgementEvent]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(JudgementEvent)
                .where(JudgementEvent.judgement_job_id == job_id, col(JudgementEvent.id) > after)
                .order_by(col(JudgementEvent.id))
                .limit(limit)
            )
        )


def job_status(engine: Engine, *, job_id: int) -> str | None:
    with Session(engine) as session:
        return session.exec(select(JudgementJob.status).where(JudgementJob.id == job_id)).first()


def event_public(event: JudgementEvent) -> dict[str, Any]:
    assert event.id is not None
    return JudgementEventPublic(
        id=event.id,
        judgement_job_id=event.judgement_job_id,
        kind=event.kind,
        data=event.data,
        created_at=event.created_at,
    ).model_dump(mode="json")
