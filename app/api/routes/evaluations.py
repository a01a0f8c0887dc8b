"""Evaluations: queue one, watch it (status, progress, an event stream), read every answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status
from sse_starlette.sse import EventSourceResponse

from app import leases
from app.api.deps import MAX_ID, EngineDep, SessionDep, SettingsDep, release
from app.api.sse import event_stream
from app.errors import InvalidInput
from app.models import Evaluation
from app.schemas.common import ErrorResponse
from app.schemas.evaluations import (
    EvaluationCreate,
    EvaluationPublic,
    EvaluationsPublic,
    SamplesPublic,
)
from app.services import evaluations as svc

router = APIRouter(tags=["evaluations"])
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


def evaluation_by_id(
    session: SessionDep,
    evaluation_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Evaluation id.")],
) -> Evaluation:
    return svc.get_evaluation(session=session, evaluation_id=evaluation_id)


EvaluationDep = Annotated[Evaluation, Depends(evaluation_by_id)]


@router.post(
    "/evaluations",
    status_code=status.HTTP_202_ACCEPTED,
    responses={**ERRORS, 422: {"model": ErrorResponse}},
)
def create_evaluation(
    session: SessionDep, settings: SettingsDep, body: EvaluationCreate
) -> EvaluationPublic:
    """Queue an evaluation: each model answers the reference tasks (the dataset's held-out share
    by default), scored by ROUGE-L and, with a judge, rated A-D and compared pairwise."""
    evaluation = svc.create_evaluation(session=session, settings=settings, body=body)
    return svc.evaluation_public(session=session, evaluation=evaluation)


@router.get("/evaluations")
def list_evaluations(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> EvaluationsPublic:
    """List evaluations, newest first."""
    data = [
        svc.evaluation_public(session=session, evaluation=e)
        for e in svc.list_evaluations(session=session, limit=limit)
    ]
    return EvaluationsPublic(data=data, count=len(data))


@router.get("/evaluations/{evaluation_id}", responses=ERRORS)
def read_evaluation(session: SessionDep, evaluation: EvaluationDep) -> EvaluationPublic:
    """Read an evaluation's status, progress and metrics so far."""
    return svc.evaluation_public(session=session, evaluation=evaluation)


@router.post("/evaluations/{evaluation_id}/cancel", responses=ERRORS)
def cancel_evaluation(session: SessionDep, evaluation: EvaluationDep) -> EvaluationPublic:
    """Cancel an evaluation; what is stored stays readable. Idempotent."""
    evaluation = svc.cancel_evaluation(session=session, evaluation=evaluation)
    return svc.evaluation_public(session=session, evaluation=evaluation)


@router.get("/evaluations/{evaluation_id}/samples", responses=ERRORS)
def list_samples(
    session: SessionDep,
    settings: SettingsDep,
    evaluation: EvaluationDep,
    after: Annotated[
        str | None,
        Query(pattern="^[0-9]{0,9}$", description="`next_cursor` of the previous page."),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, description="At most SELFINSTRUCT_PAGE_SIZE_MAX (default 1000).")
    ] = 50,
) -> SamplesPublic:
    """Every task with each model's answer side by side, its score, rating and comparisons."""
    if limit > settings.page_size_max:
        raise InvalidInput(f"limit must be at most {settings.page_size_max}.")
    return svc.list_samples(
        session=session, evaluation=evaluation, after=int(after) if after else -1, limit=limit
    )


@router.get(
    "/evaluations/{evaluation_id}/events",
    response_class=EventSourceResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "status, progress and end events.",
        },
    },
)
async def evaluation_events(
    request: Request,
    session: SessionDep,
    engine: EngineDep,
    evaluation: EvaluationDep,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    poll_seconds: Annotated[
        float, Query(allow_inf_nan=False, description="Clamped to 0.05-5 s.")
    ] = 0.5,
) -> EventSourceResponse:
    """Stream the evaluation's progress as server-sent events until it ends (Last-Event-ID)."""
    assert evaluation.id is not None
    evaluation_id = evaluation.id
    release(session)
    return event_stream(
        request,
        rows_after=lambda after: svc.events_after(engine, evaluation_id=evaluation_id, after=after),
        encode=lambda e: (e.id, e.kind, svc.event_public(e)),
        status=lambda: svc.evaluation_status(engine, evaluation_id=evaluation_id),
        final=leases.FINAL,
        last_event_id_header=last_event_id,
        poll_seconds=poll_seconds,
    )
