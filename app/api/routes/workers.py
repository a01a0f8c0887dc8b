"""The remote fine-tune worker protocol: claim, report events (which renews the lease), complete.

A GPU machine that cannot reach the database runs `selfinstruct worker --kind finetune
--api-url ... --worker-token ...`; these routes do on its behalf what a database-connected
worker does directly, through the same functions (app/finetune/relay.py), and take and give the
worker protocol's models (app/finetune/protocol.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from app.api.deps import EngineDep, SessionDep, SettingsDep, bearer_token, token_matches
from app.api.errors import COMMON_ERRORS
from app.errors import Unauthorized
from app.finetune import relay
from app.finetune.protocol import ClaimRequest, CompleteRequest, Continue, EventsRequest, JobSpec
from app.finetune.schemas import FineTuningJob
from app.finetune.service import job_public
from app.schemas.common import ErrorResponse


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


@router.post(
    "/claim", response_model=JobSpec, responses={204: {"description": "No job is waiting."}}
)
def claim_job(engine: EngineDep, settings: SettingsDep, body: ClaimRequest) -> Any:
    """Claim the oldest queued job (or one whose lease expired) and get what to train."""
    spec = relay.claim_job(engine=engine, settings=settings, worker_id=body.worker_id)
    return spec if spec is not None else Response(status_code=204)


@router.post("/{job_id}/events")
def report_events(
    engine: EngineDep, settings: SettingsDep, job_id: str, body: EventsRequest
) -> Continue:
    """Record training events and renew the lease; answers whether to go on."""
    return relay.report_events(
        engine=engine,
        settings=settings,
        job_id=job_id,
        worker_id=body.worker_id,
        events=body.events,
    )


@router.post("/{job_id}/complete")
def complete(
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
    job_id: str,
    body: CompleteRequest,
) -> FineTuningJob:
    """Finish a job with the worker's outcome: succeeded (trained_tokens) or failed (error)."""
    job = relay.complete(
        session=session,
        engine=engine,
        settings=settings,
        job_id=job_id,
        worker_id=body.worker_id,
        outcome=body.outcome,
    )
    return job_public(session=session, job=job)
