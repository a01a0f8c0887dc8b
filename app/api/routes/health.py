"""Liveness, readiness and Prometheus metrics, unversioned. Probes never need the token;
metrics are a read like the /v1 ones (dataset names, job ids, model ids), so with
SELFINSTRUCT_PRIVATE_READS they need it too."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.api.deps import EngineDep, SettingsDep, require_token
from app.db import current_revision, head_revision
from app.metrics import render_metrics
from app.schemas.common import ErrorResponse, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Readiness}})
def readyz(engine: EngineDep, settings: SettingsDep, response: Response) -> Readiness:
    """The database answers and its schema is current."""
    try:
        revision = current_revision(engine)
    except Exception as exc:  # any driver error means "not ready", not a 500
        response.status_code = 503
        return Readiness(status="unavailable", database=type(exc).__name__, schema_revision=None)
    if revision != head_revision(settings):
        response.status_code = 503
        return Readiness(status="not_migrated", database="ok", schema_revision=revision)
    return Readiness(status="ready", database="ok", schema_revision=revision)


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorResponse, "description": "Private reads need the token."}},
)
def metrics(engine: EngineDep) -> Response:
    """Prometheus text format: request counters and latencies, pool sizes by status. With
    SELFINSTRUCT_PRIVATE_READS it needs `Authorization: Bearer <token>` like every read (a
    Prometheus scrape job sets it with `authorization: {credentials: ...}`)."""
    body, content_type = render_metrics(engine)
    return Response(content=body, media_type=content_type)
