"""OpenAI-compatible files and fine-tuning jobs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse

from app import leases
from app.api.deps import EngineDep, SessionDep, SettingsDep, release
from app.api.sse import event_stream
from app.finetune import service as svc
from app.finetune.schemas import (
    FileDeleted,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    Page,
)
from app.models import FineTuningJobRow, StoredFile
from app.schemas.common import ErrorResponse
from app.services import files as file_svc

router = APIRouter(tags=["fine-tuning"])
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}
UPLOAD_CHUNK = 1 << 20
NOT_EMPTY: dict[str, Any] = {"minLength": 1}


def file_by_id(
    session: SessionDep, file_id: Annotated[str, Path(description="A file id (file-...).")]
) -> StoredFile:
    return file_svc.get_file(session=session, file_id=file_id)


FileDep = Annotated[StoredFile, Depends(file_by_id)]


@router.post("/files", responses={422: {"model": ErrorResponse}})
async def upload_file(
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[
        UploadFile,
        # The schema states the rule the code enforces: an empty upload is refused.
        File(description="JSONL, one example a line; not empty.", json_schema_extra=NOT_EMPTY),
    ],
    purpose: Annotated[
        Literal["fine-tune"], Form(description="Only fine-tune files are kept here.")
    ] = "fine-tune",
) -> FileObject:
    """Upload a JSONL training file (chat `messages` format)."""

    async def read_all() -> list[bytes]:
        chunks = []
        while chunk := await file.read(UPLOAD_CHUNK):
            chunks.append(chunk)
        return chunks

    record = file_svc.store_file(
        session=session,
        settings=settings,
        chunks=await read_all(),
        filename=file.filename or "upload.jsonl",
        purpose=purpose,
    )
    return FileObject(**svc.file_public(record))


@router.get("/files", responses=ERRORS)
def list_files(
    session: SessionDep,
    settings: SettingsDep,
    purpose: Annotated[
        str | None, Query(max_length=32, description="Only files with this purpose.")
    ] = None,
    after: Annotated[
        str | None,
        Query(
            pattern=file_svc.FILE_ID.pattern, description="The last file id of the previous page."
        ),
    ] = None,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            description="At most SELFINSTRUCT_PAGE_SIZE_MAX (1000 unless set), which is also "
            "the default, as OpenAI's default is its maximum.",
        ),
    ] = None,
    order: Annotated[
        Literal["asc", "desc"], Query(description="By upload time; newest first by default.")
    ] = "desc",
) -> Page[FileObject]:
    """List uploaded and frozen files, newest first, as `client.files.list()` pages them."""
    records, more = file_svc.list_files(
        session=session, settings=settings, purpose=purpose, after=after, limit=limit, order=order
    )
    return Page[FileObject](data=[FileObject(**svc.file_public(r)) for r in records], has_more=more)


@router.get("/files/{file_id}", responses=ERRORS)
def read_file(record: FileDep) -> FileObject:
    """Read a file's metadata."""
    return FileObject(**svc.file_public(record))


@router.delete("/files/{file_id}", responses={**ERRORS, 409: {"model": ErrorResponse}})
def delete_file(session: SessionDep, settings: SettingsDep, record: FileDep) -> FileDeleted:
    """Delete a file and its bytes; 409 while a queued or running fine-tune job reads it."""
    file_svc.delete_file(session=session, settings=settings, record=record)
    return FileDeleted(id=record.id)


@router.get("/files/{file_id}/content", response_class=FileResponse, responses=ERRORS)
def file_content(settings: SettingsDep, record: FileDep) -> FileResponse:
    """Download a file's bytes."""
    return FileResponse(
        file_svc.file_path(settings, record.id),
        media_type="application/jsonl",
        filename=record.filename,
    )


def job_by_id(session: SessionDep, job_id: str) -> FineTuningJobRow:
    return svc.get_job(session=session, job_id=job_id)


JobDep = Annotated[FineTuningJobRow, Depends(job_by_id)]


@router.post("/fine_tuning/jobs", responses={**ERRORS, 422: {"model": ErrorResponse}})
def create_job(
    session: SessionDep, settings: SettingsDep, body: FineTuningJobCreate
) -> FineTuningJob:
    """Create a job from a file or a dataset; a bad file fails it at validating_files."""
    job = svc.create_job(session=session, settings=settings, body=body)
    return svc.job_public(session=session, job=job)


@router.get("/fine_tuning/jobs", responses=ERRORS)
def list_jobs(
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page[FineTuningJob]:
    """List jobs, newest first."""
    jobs, more = svc.list_jobs(session=session, after=after, limit=limit)
    return Page[FineTuningJob](
        data=[svc.job_public(session=session, job=j) for j in jobs], has_more=more
    )


@router.get("/fine_tuning/jobs/{job_id}", responses=ERRORS)
def read_job(session: SessionDep, job: JobDep) -> FineTuningJob:
    """Read a job with its status, progress and training data."""
    return svc.job_public(session=session, job=job)


@router.post("/fine_tuning/jobs/{job_id}/cancel", responses=ERRORS)
def cancel_job(session: SessionDep, job: JobDep) -> FineTuningJob:
    """Cancel a job; idempotent, and final states never change."""
    return svc.job_public(session=session, job=svc.cancel_job(session=session, job=job))


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", responses=ERRORS)
def list_checkpoints(session: SessionDep, job: JobDep) -> Page[FineTuningJobCheckpoint]:
    """Checkpoints with step, training loss and validation loss, newest first."""
    data = [svc.checkpoint_public(job, c) for c in svc.list_checkpoints(session=session, job=job)]
    return Page[FineTuningJobCheckpoint](data=data, has_more=False)


@router.get(
    "/fine_tuning/jobs/{job_id}/events",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def list_events(
    request: Request,
    session: SessionDep,
    engine: EngineDep,
    job: JobDep,
    after: Annotated[
        str | None,
        Query(
            pattern="^(ftevent-)?[0-9]{1,18}$",
            description="An event id from a previous page (ftevent-<n>).",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    stream: bool = False,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Any:
    """Job events, newest first; `stream=true` (or Accept: text/event-stream) follows them live
    in order, resuming after `Last-Event-ID` when a client reconnects."""
    if stream or "text/event-stream" in request.headers.get("accept", ""):
        job_id = job.id
        release(session)
        return event_stream(
            request,
            rows_after=lambda after: svc.events_after(engine, job_id=job_id, after=after),
            encode=lambda e: (e.id, "event", svc.event_public(e)),
            status=lambda: svc.job_status(engine, job_id=job_id),
            final=leases.FINAL,
            last_event_id_header=last_event_id,
        )
    events, more = svc.list_events(session=session, job=job, after=after, limit=limit)
    return Page[FineTuningJobEvent](data=[svc.event_public(e) for e in events], has_more=more)
