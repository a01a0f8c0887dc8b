"""Datasets and their seeds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status

from app.api.deps import DatasetDep, SessionDep, SettingsDep
from app.errors import InvalidInput, PayloadTooLarge
from app.schemas.common import ErrorItem, ErrorResponse
from app.schemas.datasets import (
    DatasetCreate,
    DatasetPublic,
    DatasetsPublic,
    DatasetUpdate,
    SeedImportResult,
)
from app.schemas.stats import DatasetStats
from app.services import datasets as svc
from app.services import seeds as seed_svc
from app.services import stats as stats_svc

router = APIRouter(prefix="/datasets", tags=["datasets"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown dataset."},
}

_SEED_SCHEMA = {
    "type": "array",
    "items": {"$ref": "#/components/schemas/SeedTask"},
    "minItems": 1,
}
SEED_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Seed tasks in the Self-Instruct `seed_tasks.jsonl` format: a JSON array, "
        "JSONL (one task a line) or a multipart upload of either. Rule between tasks: "
        f"{seed_svc.DUPLICATE_ID}. At most SELFINSTRUCT_SEED_IMPORT_MAX_TASKS tasks and "
        "SELFINSTRUCT_SEED_IMPORT_MAX_BYTES bytes (413 beyond).",
        "content": {
            "application/json": {"schema": _SEED_SCHEMA},
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "One seed task per line."}
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        404: {"model": ErrorResponse, "description": "An unknown evaluation dataset."},
        409: {"model": ErrorResponse},
    },
)
def create_dataset(session: SessionDep, body: DatasetCreate) -> DatasetPublic:
    """Create an empty dataset."""
    dataset = svc.create_dataset(session=session, data=body)
    return svc.dataset_public(session=session, dataset=dataset)


@router.get("")
def list_datasets(session: SessionDep) -> DatasetsPublic:
    """List datasets with their task counts."""
    data = svc.list_datasets(session=session)
    return DatasetsPublic(data=data, count=len(data))


@router.get("/{name}", responses=ERRORS)
def read_dataset(session: SessionDep, dataset: DatasetDep) -> DatasetPublic:
    """Read one dataset with its task counts."""
    return svc.dataset_public(session=session, dataset=dataset)


@router.patch("/{name}", responses={**ERRORS, 422: {"model": ErrorResponse}})
def update_dataset(session: SessionDep, dataset: DatasetDep, body: DatasetUpdate) -> DatasetPublic:
    """Change a dataset's held-out share, evaluation sets or description."""
    dataset = svc.update_dataset(session=session, dataset=dataset, data=body)
    return svc.dataset_public(session=session, dataset=dataset)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**ERRORS, 409: {"model": ErrorResponse}},
)
def delete_dataset(session: SessionDep, dataset: DatasetDep) -> Response:
    """Delete a dataset with all its tasks and runs."""
    svc.delete_dataset(session=session, dataset=dataset)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The seed import is larger than {max_bytes} bytes (SELFINSTRUCT_SEED_IMPORT_MAX_BYTES); "
        "split it into smaller imports. Nothing was stored.",
        errors=[ErrorItem(field="body", reason=f"more than {max_bytes} bytes")],
    )


async def _seed_body(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The raw seed payload and its kind ('json' or 'jsonl'), whichever way it was sent; reading
    stops as soon as it passes `max_bytes`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidInput("Multipart seed upload needs a file in the field 'file'.")
        raw = await upload.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise _too_large(max_bytes)
        return raw, "json" if raw.lstrip()[:1] == b"[" else "jsonl"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if content_type == "application/json":
        return raw, "json"
    if content_type in {
        "application/x-ndjson",
        "application/jsonl",
        "application/jsonlines",
        "text/plain",
        "",
    }:
        return raw, "jsonl"
    raise InvalidInput(
        f"Unsupported content type '{content_type}'; send application/json (an array), "
        "application/x-ndjson (JSONL) or multipart/form-data with a 'file'."
    )


@router.post(
    "/{name}/seeds",
    openapi_extra=SEED_BODY,
    responses={**ERRORS, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def import_seeds(
    request: Request, session: SessionDep, settings: SettingsDep, dataset: DatasetDep
) -> SeedImportResult:
    """Import seed tasks; the whole file is refused if any line is invalid. Same id updates."""
    raw, kind = await _seed_body(request, settings.seed_import_max_bytes)
    parse = seed_svc.parse_json_array if kind == "json" else seed_svc.parse_jsonl
    seeds = parse(raw, max_tasks=settings.seed_import_max_tasks)
    return seed_svc.import_seeds(session=session, dataset=dataset, seeds=seeds)


@router.get("/{name}/stats", responses=ERRORS)
def dataset_stats(session: SessionDep, dataset: DatasetDep) -> DatasetStats:
    """The dataset's shape: sizes, lengths, ROUGE-L to the nearest seed, rejections, verbs."""
    return stats_svc.dataset_stats(session=session, dataset=dataset)
