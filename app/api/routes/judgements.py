"""Judgement jobs: rate a dataset's existing tasks with a judge model, in the background."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status
from sse_starlette.sse import EventSourceResponse

from app import leases
from app.api.deps import MAX_ID, DatasetDep, EngineDep, SessionDep, SettingsDep, release
from app.api.sse import event_stream
from app.models import Dataset, JudgementJob
from app.schemas.common import ErrorResponse
from app.schemas.judging import JudgementJobCreate, JudgementJobPublic, JudgementJobsPublic
from app.services import judgement_jobs as svc

router = APIRouter(tags=["judgements"])
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


def job_by_id(
    session: SessionDep,
    judgement_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Judgement job id.")],
) -> JudgementJob:
    return svc.get_job(session=session, job_id=judgement_id)


JobDep = Annotated[JudgementJob, Depends(job_by_id)]


def _public(session: SessionDep, job: JudgementJob) -> JudgementJobPublic:
    dataset = session.get(Dataset, job.dataset_id)
    assert dataset is not None
    return svc.job_public(job=job, dataset_name=dataset.name)


@router.post(
    "/datasets/{name}/judgements",
    status_code=status.HTTP_202_ACCEPTED,
    responses={**ERRORS, 422: {"model": ErrorResponse}},
)
def create_judgement_job(
    session: SessionDep, settings: SettingsDep, dataset: DatasetDep, body: JudgementJobCreate
) -> JudgementJobPublic:
    """Queue a job that judges the dataset's tasks matching the filters (those that match now).
    Its progress streams at GET /v1/judgements/{id}/events; each task's rating shows on the
    task."""
    job = svc.create_job(session=session, settings=settings, dataset=dataset, body=body)
    return svc.job_public(job=job, dataset_name=dataset.name)


@router.get("/datasets/{name}/judgements", responses=ERRORS)
def list_judgement_jobs(session: SessionDep, dataset: DatasetDep) -> JudgementJobsPublic:
    """List a dataset's judgement jobs, newest first."""
    jobs = svc.list_jobs(session=session, dataset=dataset)
    data = [svc.job_public(job=j, dataset_name=dataset.name) for j in jobs]
    return JudgementJobsPublic(data=data, count=len(data))


@router.get("/judgements/{judgement_id}", responses=ERRORS)
def read_judgement_job(session: SessionDep, job: JobDep) -> JudgementJobPublic:
    """Read a judgement job's status and progress."""
    return _public(session, job)


@router.post("/judgements/{judgement_id}/cancel", responses=ERRORS)
def cancel_judgement_job(session: SessionDep, job: JobDep) -> JudgementJobPublic:
    """Cancel a judgement job; judgements already stored stay. Idempotent."""
    return _public(session, svc.cancel_job(session=session, job=job))


@router.get(
    "/judgements/{judgement_id}/events",
    response_class=EventSourceResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "status, progress and end events.",
        },
    },
)
async def judgement_job_events(
    request: Request,
    session: SessionDep,
    engine: EngineDep,
    job: JobDep,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    poll_seconds: Annotated[
        float, Query(allow_inf_nan=False, description="Clamped to 0.05-5 s.")
    ] = 0.5,
) -> EventSourceResponse:
    """Stream the job's progress as server-sent events until it ends (resumes: Last-Event-ID)."""
    assert job.id is not None
    job_id = job.id
    release(session)
    return event_stream(
        request,
        rows_after=lambda after: svc.events_after(engine, job_id=job_id, after=after),
        encode=lambda e: (e.id, e.kind, svc.event_public(e)),
        status=lambda: svc.job_status(engine, job_id=job_id),
        final=leases.FINAL,
        last_event_id_header=last_event_id,
        poll_seconds=poll_seconds,
    )
