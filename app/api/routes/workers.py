"""The remote fine-tune worker protocol: claim, report events (which renews the lease), complete.

A GPU machine that cannot reach the database runs `selfinstruct worker --kind finetune
--api-url ... --worker-token ...`; these routes do on its behalf what a database-connected
worker does directly, through the same functions.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from sqlmodel import Session

from app.api.deps import EngineDep, SessionDep, SettingsDep
from app.errors import Conflict, Unauthorized
from app.finetune_schemas import FineTuningJob
from app.finetune_worker import begin_attempt, complete_job, job_spec, record_event, still_mine
from app.models import FineTuneJob
from app.services import finetune as svc
from app.worker import claim, renew


def require_worker_token(request: Request, settings: SettingsDep) -> None:
    if settings.worker_token is None:
        raise Unauthorized(
            "Remote workers are disabled; set SELFINSTRUCT_WORKER_TOKEN to allow them."
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.worker_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized("Workers need `Authorization: Bearer <SELFINSTRUCT_WORKER_TOKEN>`.")


router = APIRouter(
    prefix="/v1/workers/finetune",
    tags=["workers"],
    dependencies=[Depends(require_worker_token)],
)


class ClaimRequest(BaseModel):
    worker_id: str = Field(min_length=1, max_length=200)


class EventsRequest(ClaimRequest):
    events: list[dict[str, Any]] = Field(max_length=1000)


class CompleteRequest(ClaimRequest):
    outcome: dict[str, Any]


class Continue(BaseModel):
    proceed: bool = Field(description="False: the job was cancelled or taken over; stop now.")


@router.post("/claim", responses={204: {"description": "No job is waiting."}})
def claim_job(engine: EngineDep, settings: SettingsDep, body: ClaimRequest) -> Any:
    """Claim the oldest queued job (or one whose lease expired) and get what to train."""
    job_id = claim(
        engine, FineTuneJob, worker_id=body.worker_id, lease_seconds=settings.worker_lease_seconds
    )
    if job_id is None or not begin_attempt(engine, str(job_id)):
        return Response(status_code=204)
    with Session(engine) as session:
        job = session.get(FineTuneJob, job_id)
        assert job is not None
        return job_spec(settings, engine, job)


@router.post("/{job_id}/events")
def report_events(
    engine: EngineDep, settings: SettingsDep, job_id: str, body: EventsRequest
) -> Continue:
    """Record training events and renew the lease; answers whether to go on."""
    if not still_mine(engine, job_id, body.worker_id):
        return Continue(proceed=False)
    for event in body.events:
        record_event(engine, job_id, body.worker_id, event)
    renewed = renew(
        engine,
        FineTuneJob,
        row_id=job_id,
        worker_id=body.worker_id,
        lease_seconds=settings.worker_lease_seconds,
    )
    return Continue(proceed=renewed)


@router.post("/{job_id}/complete")
def complete(
    session: SessionDep, engine: EngineDep, job_id: str, body: CompleteRequest
) -> FineTuningJob:
    """Finish a job with the worker's outcome: succeeded (trained_tokens) or failed (error)."""
    job = svc.get_job(session=session, job_id=job_id)
    if not still_mine(engine, job_id, body.worker_id):
        raise Conflict(f"Job '{job_id}' is not held by worker '{body.worker_id}' any more.")
    complete_job(engine, job_id, body.worker_id, body.outcome)
    session.refresh(job)
    return svc.job_public(session=session, job=job)
