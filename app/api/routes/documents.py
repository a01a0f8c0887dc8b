"""A dataset's documents: what `backtranslate` runs write instructions for."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.api.deps import DatasetDep, SessionDep, SettingsDep
from app.errors import InvalidInput
from app.schemas.common import MAX_ID, ErrorItem, ErrorResponse
from app.schemas.datasets import (
    SOME_TEXT,
    DocumentDetail,
    DocumentPublic,
    DocumentsCreate,
    DocumentsPublic,
)
from app.services import documents as svc

router = APIRouter(prefix="/datasets/{name}/documents", tags=["documents"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown dataset or document."},
}
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Documents as JSON, or files (plain text, Markdown, JSONL of "
        '{"text": ...} lines) in the multipart field `file`, repeated for several.',
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DocumentsCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "string",
                                "pattern": SOME_TEXT,
                                "contentMediaType": "text/plain",
                                "description": "A file of UTF-8 text: plain, Markdown (.md) or "
                                'JSONL (.jsonl, one {"text": ...} a line).',
                            },
                        }
                    },
                    "required": ["file"],
                }
            },
        },
    }
}
DocumentId = Annotated[int, Path(ge=1, le=MAX_ID, description="Document id.")]
PassageChars = Annotated[
    int,
    Query(
        ge=svc.MIN_PASSAGE_CHARS,
        le=svc.MAX_PASSAGE_CHARS,
        description="Longest passage, in characters; paragraphs are joined up to it.",
    ),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=UPLOAD_BODY,
    responses={**ERRORS, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def add_documents(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    dataset: DatasetDep,
    passage_chars: PassageChars = svc.DEFAULT_PASSAGE_CHARS,
) -> DocumentsPublic:
    """Store documents split into passages; one bad document refuses the whole upload."""
    limit = settings.document_max_bytes
    uploads = await _uploads(request, limit)

    def parse_and_store() -> list[DocumentPublic]:
        # Splitting, language detection and the insert take a while for large documents: in a
        # thread, so the event loop keeps serving (event streams above all) meanwhile.
        parsed = [
            svc.parse_document(name, raw, declared=fmt, max_bytes=limit, max_chars=passage_chars)
            for name, raw, fmt in uploads
        ]
        return svc.add_documents(session=session, dataset=dataset, parsed=parsed)

    data = await asyncio.to_thread(parse_and_store)
    return DocumentsPublic(data=data, count=len(data))


@router.get("", responses=ERRORS)
def list_documents(session: SessionDep, dataset: DatasetDep) -> DocumentsPublic:
    """The dataset's documents with their passage counts."""
    data = svc.list_documents(session=session, dataset=dataset)
    return DocumentsPublic(data=data, count=len(data))


@router.get("/{document_id}", responses=ERRORS)
def read_document(
    session: SessionDep, dataset: DatasetDep, document_id: DocumentId
) -> DocumentDetail:
    """One document with its passages, in order."""
    return svc.document_detail(session=session, dataset=dataset, document_id=document_id)


@router.delete("/{document_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
def delete_document(session: SessionDep, dataset: DatasetDep, document_id: DocumentId) -> Response:
    """Delete a document and its passages; tasks written for them stay."""
    svc.delete_document(session=session, dataset=dataset, document_id=document_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _uploads(request: Request, limit: int) -> list[tuple[str, bytes, str | None]]:
    """(name, bytes, declared format) of each document, whichever way they were sent."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_part_size=limit + 1)  # a text field may be as large
        parts = form.getlist("file")
        if not parts:
            raise InvalidInput(
                "Multipart document upload needs one or more files in the field 'file'.",
                errors=[ErrorItem(field="file", reason="missing")],
            )
        out: list[tuple[str, bytes, str | None]] = []
        for number, part in enumerate(parts, start=1):
            if isinstance(part, str):  # a plain form field: text, named by its position
                out.append((f"file-{number}", part.encode(), "text"))
            else:
                raw = await part.read(limit + 1)
                out.append((part.filename or f"file-{number}", raw, None))
        return out
    if content_type != "application/json":
        raise InvalidInput(
            f"Unsupported content type '{content_type}'; send application/json "
            '({"documents": [{"name", "text"}]}) or multipart/form-data with files in "file".'
        )
    raw = await request.body()
    try:
        body = DocumentsCreate.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The body is not JSON: {exc}") from exc
    except ValidationError as exc:  # answered like any body FastAPI validates itself
        raise RequestValidationError(exc.errors()) from exc
    return [
        (doc.name, doc.text.encode(), doc.format or svc.text_format(doc.name))
        for doc in body.documents
    ]
