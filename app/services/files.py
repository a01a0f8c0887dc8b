"""Files for fine-tuning (OpenAI's /v1/files): stored under the data dir by id, never by a
client-chosen name, so no request can read or write outside that folder."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from sqlmodel import Session

from app.errors import InvalidInput, NotFound
from app.models import StoredFile
from app.settings import Settings

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
PURPOSES = frozenset({"fine-tune"})


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
