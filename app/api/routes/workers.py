"""The remote fine-tune worker protocol: claim, report events (which renews the lease), complete.

A GPU machine that cannot reach the database runs `selfinstruct worker --kind finetune
--api-url ... --worker-token ...`; these routes do on its behalf what a database-connected
worker does directly, through the same functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sqlmodel import Session

from app.api.deps import EngineDep, SessionDep, SettingsDep, bearer_token, token_matches
from app.api.errors import COMMON_ERRORS
from app.errors import Conflict, InvalidInput, Unauthorized
from app.finetune_schemas import (
    ClaimRequest,
    CompleteRequest,
    Continue,
    EventsRequest,
    FineTuningJob,
)
from app.finetune_worker import begin_attempt, complete_job, job_spec, record_event, still_mine
from app.leases import claim, mark_present, renew
from app.models import FineTuningJobRow
from app.schemas import ErrorItem, ErrorResponse
from app.services import finetune as svc


def require_worker_token(request: Request, settings: SettingsDep) -> None:
    if settings.worker_token is None:
        raise Unauthorized(
            "Remote workers are disabled; set SELFINSTRUCT_WORKER_TOKEN to allow them."
        )
    token = bearer_token(request)
    if token is None or not token_matches(token, settings.worker_token):
        raise Unauthorized("Workers need `Authorization: Bearer <SELFINSTRUCT_WORKER_TOKEN>`.")


router = APIRouter(
    prefix="/v1/workers/finetune",
    tags=["workers"],
    dependencies=[Depends(require_worker_token)],
    responses={**COMMON_ERRORS, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)


@router.post("/claim", responses={204: {"description": "No job is waiting."}})
def claim_job(engine: EngineDep, settings: SettingsDep, body: ClaimRequest) -> Any:
    """Claim the oldest queued job (or one whose lease expired) and get what to train."""
    mark_present(settings.data_dir, "finetune", body.worker_id)  # a worker polls: it is there
    job_id = claim(
        engine,
        FineTuningJobRow,
        worker_id=body.worker_id,
        lease_seconds=settings.worker_lease_seconds,
    )
    if job_id is None or not begin_attempt(engine, str(job_id)):
        return Response(status_code=204)
    with Session(engine) as session:
        job = session.get(FineTuningJobRow, job_id)
        assert job is not None
        # the lease tells the worker how often to renew while no event comes (model loading)
        return {**job_spec(settings, engine, job), "lease_seconds": settings.worker_lease_seconds}


@router.post("/{job_id}/events")
def report_events(
    engine: EngineDep, settings: SettingsDep, job_id: str, body: EventsRequest
) -> Continue:
    """Record training events and renew the lease; answers whether to go on."""
    with Session(engine) as session:
        svc.get_job(session=session, job_id=job_id)  # 404 for an unknown job
    if not still_mine(engine, job_id, body.worker_id):
        return Continue(proceed=False)
    for event in body.events:
        record_event(engine, job_id, body.worker_id, event)
    renewed = renew(
        engine,
        FineTuningJobRow,
        row_id=job_id,
        worker_id=body.worker_id,
        lease_seconds=settings.worker_lease_seconds,
    )
    return Continue(proceed=renewed)


@router.post("/{job_id}/complete")
def complete(
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
    job_id: str,
    body: CompleteRequest,
) -> FineTuningJob:
    """Finish a job with the worker's outcome: succeeded (trained_tokens) or failed (error)."""
    job = svc.get_job(session=session, job_id=job_id)
    if not still_mine(engine, job_id, body.worker_id):
        raise Conflict(f"Job '{job_id}' is not held by worker '{body.worker_id}' any more.")
    if body.outcome.model_dir is not None:
        _inside_data_dir(settings.data_dir, body.outcome.model_dir, "outcome.model_dir")
    complete_job(engine, job_id, body.worker_id, body.outcome.model_dump(exclude_none=True))
    session.refresh(job)
    return svc.job_public(session=session, job=job)


def _inside_data_dir(data_dir: Path, reported: str, field: str) -> None:
    """The API later loads a tuned model from the reported folder; a worker must not be able to
    point it at any other place on the API's disk (`/etc`, `../..`, a symlink out)."""
    root = data_dir.resolve()
    target = Path(reported)
    target = (target if target.is_absolute() else Path.cwd() / target).resolve()
    if not target.is_relative_to(root):
        raise InvalidInput(
            f"{field} must be a folder inside the API's data dir ({root}), on storage the API "
            f"mounts at the same path; got '{reported}'.",
            errors=[ErrorItem(field=field, reason="outside the data dir")],
        )
