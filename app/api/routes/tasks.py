"""Tasks: browse a dataset's pool with filters, read one task, export JSONL."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.api.deps import MAX_ID, DatasetDep, EngineDep, SessionDep, SettingsDep, TaskId
from app.errors import InvalidInput
from app.models import TaskOrigin, TaskStatus
from app.schemas import ErrorResponse, ExportFormat, TaskEdit, TaskPublic, TaskReview, TasksPublic
from app.services import tasks as svc
from app.services.export import export_chunks

router = APIRouter(tags=["tasks"])


@router.get("/datasets/{name}/tasks", responses={404: {"model": ErrorResponse}})
def list_tasks(
    session: SessionDep,
    settings: SettingsDep,
    dataset: DatasetDep,
    origin: TaskOrigin | None = None,
    status: TaskStatus | None = None,
    run_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    is_classification: bool | None = None,
    contains: Annotated[
        str | None, Query(max_length=500, description="Case-insensitive text in the instruction.")
    ] = None,
    after: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1)] = 100,
) -> TasksPublic:
    """List a dataset's tasks, oldest first, with filters and cursor pagination."""
    if limit > settings.page_size_max:
        raise InvalidInput(f"limit must be at most {settings.page_size_max}.")
    filters = svc.TaskFilters(
        origin=origin,
        status=status,
        run_id=run_id,
        is_classification=is_classification,
        contains=contains,
    )
    return svc.list_tasks(
        session=session, dataset=dataset, filters=filters, after=after, limit=limit
    )


@router.get("/tasks/{task_id}", responses={404: {"model": ErrorResponse}})
def read_task(session: SessionDep, task_id: TaskId) -> TaskPublic:
    """Read one task with its verdict, nearest neighbours and lineage."""
    task, dataset = svc.get_task(session=session, task_id=task_id)
    return svc.task_public(task=task, dataset_name=dataset.name)


@router.patch(
    "/tasks/{task_id}", responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}
)
def review_task(session: SessionDep, task_id: TaskId, review: TaskReview) -> TaskPublic:
    """Accept or reject a task by hand; the earlier verdict stays in `lineage.reviews`."""
    return svc.review_task(session=session, task_id=task_id, review=review)


@router.post(
    "/tasks/{task_id}/edits",
    status_code=201,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
def edit_task(session: SessionDep, task_id: TaskId, edit: TaskEdit) -> TaskPublic:
    """Save a corrected copy (origin `edited`, `edited_from_id` set); the original is kept."""
    return svc.edit_task(session=session, task_id=task_id, edit=edit)


@router.get(
    "/datasets/{name}/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-ndjson": {}}, "description": "One JSON object a line."},
        404: {"model": ErrorResponse},
    },
)
def export_dataset(
    engine: EngineDep,
    dataset: DatasetDep,
    format: ExportFormat = ExportFormat.self_instruct,
    include_seeds: bool = False,
) -> StreamingResponse:
    """Stream accepted tasks as JSONL in the chosen format."""
    assert dataset.id is not None
    chunks = export_chunks(
        engine=engine, dataset_id=dataset.id, fmt=format, include_seeds=include_seeds
    )
    filename = f"{dataset.name}-{format.value}.jsonl"
    return StreamingResponse(
        chunks,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
