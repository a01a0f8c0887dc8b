"""Tasks: browse a dataset's pool with filters, read one task, export JSONL, Parquet or a
Hub-ready bundle."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from app.api.deps import (
    MAX_ID,
    DatasetDep,
    EngineDep,
    SessionDep,
    SettingsDep,
    TaskId,
    in_session,
    release,
)
from app.errors import InvalidInput
from app.models import TaskOrigin, TaskStatus
from app.schemas.common import ErrorResponse
from app.schemas.datasets import (
    HUB_LICENSE_PATTERN,
    BundleFileFormat,
    ExportFormat,
    ExportSplit,
    TaskEdit,
    TaskPublic,
    TaskReview,
    TasksPublic,
)
from app.services import tasks as svc
from app.services.bundle import bundle_archive, bundle_options
from app.services.export import (
    JSONL_MEDIA_TYPE,
    PARQUET_MEDIA_TYPE,
    Selection,
    export_chunks,
    export_file,
)
from app.services.versions import export_source
from generators.judge_prompts import Rating

router = APIRouter(tags=["tasks"])

VersionQuery = Annotated[
    int | None,
    Query(
        ge=1,
        le=MAX_ID,
        description="A version id (GET /v1/datasets/{name}/versions): its frozen tasks instead "
        "of the pool as it is now. A version keeps the selection it was made with, so "
        "include_seeds, include_contaminated and min_rating are refused beside it (422: `not "
        "with version`).",
    ),
]


@router.get("/datasets/{name}/tasks", responses={404: {"model": ErrorResponse}})
async def list_tasks(
    engine: EngineDep,
    settings: SettingsDep,
    name: Annotated[str, Path(description="Dataset name.")],
    origin: TaskOrigin | None = None,
    status: TaskStatus | None = None,
    run_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    is_classification: bool | None = None,
    split: Annotated[
        ExportSplit | None,
        Query(description="`train` or `held_out`: one side of the dataset's held-out share."),
    ] = None,
    contaminated: Annotated[
        bool | None, Query(description="Only tasks marked (true) or not marked (false).")
    ] = None,
    contains: Annotated[
        str | None, Query(max_length=500, description="Case-insensitive text in the instruction.")
    ] = None,
    rating: Annotated[
        list[Rating] | None,
        Query(description="Only tasks whose latest rating is one of these (repeat for more)."),
    ] = None,
    judged: Annotated[
        bool | None,
        Query(description="Only tasks judged (true; an unparseable answer counts) or never."),
    ] = None,
    after: Annotated[
        str | None,
        Query(pattern="^[0-9]{0,18}$", description="`next_cursor` of the previous page."),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, description="At most SELFINSTRUCT_PAGE_SIZE_MAX (default 1000).")
    ] = 100,
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
        split=None if split == ExportSplit.all else split,
        contaminated=contaminated,
        ratings=tuple(rating) if rating else None,
        judged=judged,
    )
    return await in_session(
        engine, svc.list_tasks, dataset_name=name, filters=filters, after=after, limit=limit
    )


@router.get("/tasks/{task_id}", responses={404: {"model": ErrorResponse}})
async def read_task(engine: EngineDep, task_id: TaskId) -> TaskPublic:
    """Read one task with its verdict, nearest neighbours and lineage."""
    return await in_session(engine, svc.read_task, task_id=task_id)


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
        200: {
            "content": {JSONL_MEDIA_TYPE: {}, PARQUET_MEDIA_TYPE: {}},
            "description": "JSONL, one object a line; or, for `format=parquet`, a Parquet file.",
        },
        404: {"model": ErrorResponse},
    },
)
def export_dataset(
    session: SessionDep,
    engine: EngineDep,
    dataset: DatasetDep,
    format: Annotated[
        ExportFormat,
        Query(
            description="A JSONL record shape, or `parquet`: one row per instance with id, "
            "instruction, input, output, is_classification, origin and language."
        ),
    ] = ExportFormat.self_instruct,
    include_seeds: bool = False,
    split: Annotated[
        ExportSplit | None,
        Query(
            description="`train` (default): the tasks outside the dataset's held-out share, the "
            "ones to train on; `held_out`: only the held-out share; `all`: both. With "
            "`version`: the side each task was on when the version was made (default `all`)."
        ),
    ] = None,
    include_contaminated: Annotated[
        bool, Query(description="Also export tasks marked contaminated (left out by default).")
    ] = False,
    min_rating: Annotated[
        Rating | None,
        Query(description="Only tasks whose latest judge rating is this or better (A best)."),
    ] = None,
    version: VersionQuery = None,
) -> StreamingResponse:
    """Stream accepted tasks as JSONL in the chosen shape, or as Parquet; with `version`, the
    version's frozen tasks, the same bytes every time."""
    assert dataset.id is not None
    source = export_source(
        session=session,
        dataset=dataset,
        version_id=version,
        selection=Selection(
            include_seeds=include_seeds,
            include_contaminated=include_contaminated,
            min_rating=min_rating,
        ),
        split=split,
    )
    release(session)
    chunks = export_chunks(engine=engine, dataset_id=dataset.id, fmt=format, selection=source)
    name = dataset.name if version is None else f"{dataset.name}-v{version}"
    media_type, filename = export_file(dataset_name=name, fmt=format)
    return StreamingResponse(
        chunks,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/datasets/{name}/bundle",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/zip": {}},
            "description": "A zip of `<name>/README.md` (the dataset card) and "
            "`<name>/data/{train,validation}-00000-of-00001.{parquet,jsonl}`.",
        },
        404: {"model": ErrorResponse},
    },
)
def download_bundle(
    session: SessionDep,
    engine: EngineDep,
    dataset: DatasetDep,
    file_format: Annotated[
        BundleFileFormat, Query(description="The splits' file format.")
    ] = BundleFileFormat.parquet,
    license: Annotated[
        str,
        Query(
            pattern=HUB_LICENSE_PATTERN,
            description="The card's Hub license id (apache-2.0, cc-by-4.0, mit, ...).",
        ),
    ] = "other",
    include_seeds: bool = False,
    version: VersionQuery = None,
) -> StreamingResponse:
    """Download a Hub-ready bundle: train and validation splits and a dataset card, zipped."""
    options = bundle_options(
        session=session,
        dataset=dataset,
        version_id=version,
        file_format=file_format,
        license=license,
        include_seeds=include_seeds,
    )
    release(session)
    chunks = bundle_archive(engine=engine, dataset=dataset, options=options)
    return StreamingResponse(
        chunks,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{dataset.name}.zip"'},
    )
