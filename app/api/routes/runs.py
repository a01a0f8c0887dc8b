"""Generation runs: start, watch (counters and a server-sent event stream), cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status
from sse_starlette.sse import EventSourceResponse

from app import leases
from app.api.deps import MAX_ID, DatasetDep, EngineDep, SessionDep, SettingsDep, release
from app.api.sse import event_stream
from app.models import Dataset, Run
from app.schemas.common import ErrorResponse
from app.schemas.runs import RunCreate, RunPublic, RunsPublic
from app.services import runs as svc

router = APIRouter(tags=["runs"])
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


def run_by_id(
    session: SessionDep, run_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Run id.")]
) -> Run:
    return svc.get_run(session=session, run_id=run_id)


RunDep = Annotated[Run, Depends(run_by_id)]


def _public(session: SessionDep, run: Run) -> RunPublic:
    dataset = session.get(Dataset, run.dataset_id)
    assert dataset is not None
    return svc.run_public(session=session, run=run, dataset_name=dataset.name)


@router.post(
    "/datasets/{name}/runs",
    status_code=status.HTTP_201_CREATED,
    responses={**ERRORS, 409: {"model": ErrorResponse}, 413: {"model": ErrorResponse}},
)
def create_run(
    session: SessionDep, settings: SettingsDep, dataset: DatasetDep, body: RunCreate
) -> RunPublic:
    """Queue a generation run; a worker picks it up at once."""
    run = svc.create_run(session=session, settings=settings, dataset=dataset, body=body)
    return svc.run_public(session=session, run=run, dataset_name=dataset.name)


@router.get("/datasets/{name}/runs", responses=ERRORS)
def list_runs(session: SessionDep, dataset: DatasetDep) -> RunsPublic:
    """List a dataset's runs, newest first."""
    runs = svc.list_runs(session=session, dataset=dataset)
    data = svc.runs_public(session=session, runs=runs, dataset_name=dataset.name)
    return RunsPublic(data=data, count=len(data))


@router.get("/runs/{run_id}", responses=ERRORS)
def read_run(session: SessionDep, run: RunDep) -> RunPublic:
    """Read a run's status and counters."""
    return _public(session, run)


@router.post("/runs/{run_id}/cancel", responses=ERRORS)
def cancel_run(session: SessionDep, run: RunDep) -> RunPublic:
    """Cancel a run; its worker stops within one batch. Idempotent."""
    return _public(session, svc.cancel_run(session=session, run=run))


@router.get(
    "/runs/{run_id}/events",
    response_class=EventSourceResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "status, candidate, counters and end events.",
        },
    },
)
async def run_events(
    request: Request,
    session: SessionDep,
    engine: EngineDep,
    run: RunDep,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    poll_seconds: Annotated[
        float, Query(allow_inf_nan=False, description="Clamped to 0.05-5 s.")
    ] = 0.5,
) -> EventSourceResponse:
    """Stream the run's progress as server-sent events until it ends (resumes: Last-Event-ID)."""
    assert run.id is not None
    run_id = run.id
    release(session)
    return event_stream(
        request,
        rows_after=lambda after: svc.events_after(engine, run_id=run_id, after=after),
        encode=lambda e: (e.id, e.kind, svc.event_public(e)),
        status=lambda: svc.run_status(engine, run_id=run_id),
        final=leases.FINAL,
        last_event_id_header=last_event_id,
        poll_seconds=poll_seconds,
    )
