"""Files for fine-tuning (OpenAI's /v1/files): stored under the data dir by id, never by a
client-chosen name, so no request can read or write outside that folder. Listed and deleted as
OpenAI does; a file a queued or running fine-tune job still reads cannot be deleted."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from sqlmodel import Session, col, or_, select

from app.errors import Conflict, InvalidInput, NotFound
from app.models import FineTuningJobRow, JobStatus, StoredFile
from app.schemas.common import ErrorItem
from app.settings import Settings

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
PURPOSES = frozenset({"fine-tune"})
# Jobs that will still read their files: validating (inside a create request), waiting, training.
READING_STATUSES = (
    JobStatus.validating_files.value,
    JobStatus.queued.value,
    JobStatus.running.value,
)


def files_dir(settings: Settings) -> Path:
    path = settings.data_dir / "files"
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_path(settings: Settings, file_id: str) -> Path:
    if not FILE_ID.fullmatch(file_id):
        raise NotFound(f"File '{file_id}' does not exist.")
    return files_dir(settings) / f"{file_id}.jsonl"


def store_file(
    *,
    session: Session,
    settings: Settings,
    chunks: Iterable[bytes],
    filename: str,
    purpose: str,
    dataset_id: int | None = None,
) -> StoredFile:
    """Write the bytes first, then the row: a crash leaves at most an orphan file, never a row
    pointing at nothing."""
    if purpose not in PURPOSES:
        raise InvalidInput(f"purpose must be one of {sorted(PURPOSES)}, got '{purpose}'.")
    file_id = f"file-{secrets.token_hex(12)}"
    path = file_path(settings, file_id)
    digest, size, lines = hashlib.sha256(), 0, 0
    with path.open("wb") as fh:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            fh.write(chunk)
    if size == 0:
        path.unlink(missing_ok=True)
        raise InvalidInput("The file is empty; upload JSONL with one example a line.")
    record = StoredFile(
        id=file_id,
        purpose=purpose,
        filename=Path(filename).name[:255] or "upload.jsonl",
        bytes=size,
        sha256=digest.hexdigest(),
        lines=lines,
        dataset_id=dataset_id,
    )
    session.add(record)
    session.commit()
    session.refresh(record)
    return record


def get_file(*, session: Session, file_id: str) -> StoredFile:
    record = session.get(StoredFile, file_id) if FILE_ID.fullmatch(file_id) else None
    if record is None:
        raise NotFound(f"File '{file_id}' does not exist; upload it with POST /v1/files.")
    return record


def list_files(
    *,
    session: Session,
    settings: Settings,
    purpose: str | None,
    after: str | None,
    limit: int | None,
    order: Literal["asc", "desc"],
) -> tuple[list[StoredFile], bool]:
    """A page of files by upload time (newest first unless `order="asc"`) and whether more
    follow; `after` is the last file id of the previous page, as OpenAI's cursor is. Without a
    `limit`, a page is as long as the server allows."""
    if limit is None:
        limit = settings.page_size_max
    elif limit > settings.page_size_max:
        raise InvalidInput(
            f"limit must be at most {settings.page_size_max} (SELFINSTRUCT_PAGE_SIZE_MAX), "
            f"got {limit}; page with `after`.",
            errors=[ErrorItem(field="limit", reason=f"above {settings.page_size_max}")],
        )
    created, ident = col(StoredFile.created_at), col(StoredFile.id)
    query = select(StoredFile)
    if purpose is not None:
        query = query.where(StoredFile.purpose == purpose)
    if after is not None:
        anchor = session.get(StoredFile, after)
        if anchor is None:
            raise NotFound(
                f"after: file '{after}' does not exist; pass the last id of the previous page.",
                errors=[ErrorItem(field="after", reason="no such file")],
            )
        if order == "desc":
            query = query.where(
                or_(created < anchor.created_at, (created == anchor.created_at) & (ident < after))
            )
        else:
            query = query.where(
                or_(created > anchor.created_at, (created == anchor.created_at) & (ident > after))
            )
    ordering = (created.desc(), ident.desc()) if order == "desc" else (created, ident)
    rows = list(session.exec(query.order_by(*ordering).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_file(*, session: Session, settings: Settings, record: StoredFile) -> None:
    """Refuse (409, naming the job) while a fine-tune job that has not ended reads the file;
    otherwise drop the row, then the bytes: a crash in between leaves at most an orphan file,
    never a listed file without bytes. Finished jobs keep the id, as OpenAI's do."""
    reader = session.exec(
        select(FineTuningJobRow)
        .where(
            col(FineTuningJobRow.status).in_(READING_STATUSES),
            or_(
                FineTuningJobRow.training_file == record.id,
                FineTuningJobRow.validation_file == record.id,
            ),
        )
        .order_by(col(FineTuningJobRow.created_at))
    ).first()
    if reader is not None:
        role = "training_file" if reader.training_file == record.id else "validation_file"
        raise Conflict(
            f"File '{record.id}' is the {role} of fine-tuning job '{reader.id}' "
            f"({reader.status}); cancel it (POST /v1/fine_tuning/jobs/{reader.id}/cancel) or "
            "wait until it ends, then delete the file.",
            errors=[ErrorItem(field="file_id", reason=f"in use by {reader.id}")],
        )
    session.delete(record)
    session.commit()
    file_path(settings, record.id).unlink(missing_ok=True)
