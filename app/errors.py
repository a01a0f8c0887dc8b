"""Service errors and the one place that turns any error into a JSON body without a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.schemas.common import ErrorItem, ErrorResponse

log = logging.getLogger("selfinstruct")


class ServiceError(Exception):
    """Raised by services; carries the HTTP status so routes never build error responses."""

    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, *, errors: list[ErrorItem] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class InvalidInput(ServiceError):
    status_code = 422
    code = "invalid_input"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class TooBusy(ServiceError):
    """The work would have to wait behind more than the service lets wait; try again later."""

    status_code = 429
    code = "too_busy"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class UpstreamError(ServiceError):
    """A model server failed after its retries; the client's request itself was fine."""

    status_code = 502
    code = "upstream_error"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


def error_response(
    status_code: int,
    code: str,
    detail: str,
    errors: list[ErrorItem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(detail=detail, code=code, errors=errors or [])
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part not in ("body", "query", "path"))


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    if isinstance(exc, TooBusy):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return error_response(exc.status_code, exc.code, exc.detail, exc.errors, headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    items = [
        ErrorItem(
            # A model-level check may name its field in the error's context (no loc of its own).
            field=_loc_to_field(tuple(err.get("loc", ())))
            or (err.get("ctx") or {}).get("field")
            or None,
            reason=err["msg"],
        )
        for err in exc.errors()
    ]
    summary = "; ".join(f"{i.field or 'body'}: {i.reason}" for i in items[:5])
    return error_response(422, "validation_error", f"Invalid request: {summary}", items)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return error_response(exc.status_code, code, str(exc.detail), headers=headers or None)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path: the router answers 405 from the first route
    whose path matches and names only that route's methods. Each method is tried against the
    app's routes as the router itself would match it."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.routes):
            allowed.append(method)
    return allowed


async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold (an id past 64 bits on SQLite, a NUL byte or an
    out-of-range number on PostgreSQL) is the client's mistake, not a server fault; the
    statement failed, so its transaction was rolled back and nothing was written."""
    log.info(
        "refused a value the database cannot store on %s %s: %s",
        request.method,
        request.url.path,
        exc,
    )
    return error_response(
        422,
        "out_of_range",
        "A value in the request cannot be stored or compared by the database "
        "(a number out of range or a NUL character); send a smaller number or clean text.",
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "Internal server error; see the server log.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(DataError, _out_of_range)
    app.add_exception_handler(Exception, _unexpected_error)
