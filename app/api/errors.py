"""Error responses every `/v1` route can give, declared once so the OpenAPI document describes
what the service really sends (its own error shape, not FastAPI's default 422 body)."""

from __future__ import annotations

from typing import Any

from app.schemas.common import ErrorResponse

COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body could not be read as its type."},
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token."},
    413: {"model": ErrorResponse, "description": "The body is over a configured limit."},
    422: {"model": ErrorResponse, "description": "The request is invalid; `errors` says where."},
}
