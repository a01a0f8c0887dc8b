"""The remote fine-tune worker protocol: claim, report events (which renews the lease), complete.

A GPU machine that cannot reach the database runs `selfinstruct worker --kind finetune
--api-url ... --worker-token ...`; these routes do on its behalf what a database-connected
worker does directly, through the same functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from sqlmodel import Session

from app.api.deps import EngineDep, SessionDep, SettingsDep, bearer_token, token_matches
from app.api.errors import COMMON_ERRORS
from app.errors import Conflict, InvalidInput, Unauthorized
from app.finetune_schemas import FineTuningJob
from app.finetune_worker import begin_attempt, complete_job, job_spec, record_event, still_mine
from app.leases import claim, renew
from app.models import FineTuneJob
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

# Keys each training event kind must carry, with their types: the recorder reads them directly,
# so a malformed event is refused here (422) instead of failing halfway through recording.
_Number = (int, float)
EVENT_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "step": {"step": (int,), "total_steps": (int,), "train_loss": _Number},
    "eval": {"step": (int,), "eval_loss": _Number},
    "checkpoint": {"step": (int,), "path": (str,)},
    "done": {"step": (int,)},
}


class ClaimRequest(BaseModel):
    worker_id: str = Field(min_length=1, max_length=200)


class EventsRequest(ClaimRequest):
    events: list[dict[str, Any]] = Field(max_length=1000)

    @model_validator(mode="after")
    def _well_formed(self) -> EventsRequest:
        for index, event in enumerate(self.events):
            kind = event.get("type")
            if not isinstance(kind, str) or not 1 <= len(kind) <= 64:
                raise ValueError(f"events[{index}].type must be a short string")
            for key, types in EVENT_FIELDS.get(kind, {}).items():
                value = event.get(key)
                if isinstance(value, bool) or not isinstance(value, types):
                    raise ValueError(
                        f"events[{index}] ({kind}) needs `{key}` as "
                        f"{' or '.join(t.__name__ for t in types)}"
                    )
        return self


class JobErrorReport(BaseModel):
    code: str = Field(min_length=1, max_length=100)
    message: str = Field(max_length=10_000)
    param: str | None = Field(None, max_length=100)


class Outcome(BaseModel):
    """How the job ended on the worker: succeeded with its model, or failed with an error."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["succeeded", "failed"]
    trained_tokens: StrictInt | None = Field(None, ge=0, le=2**62)
    model_dir: str | None = Field(
        None,
        max_length=4096,
        description="The tuned model's folder; must lie inside the API's data dir, "
        "which the API loads it from.",
    )
    error: JobErrorReport | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Outcome:
        if self.status == "failed" and self.error is None:
            raise ValueError("a failed outcome needs an `error` with code and message")
        return self


class CompleteRequest(ClaimRequest):
    outcome: Outcome


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
        FineTuneJob,
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
