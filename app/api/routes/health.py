"""Liveness, readiness and Prometheus metrics; unversioned, never behind the token."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import EngineDep, SettingsDep
from app.db import current_revision, head_revision
from app.metrics import render_metrics
from app.schemas import Health, Readiness

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


@router.get("/metrics", response_class=Response)
def metrics(engine: EngineDep) -> Response:
    """Prometheus text format: request counters and latencies, pool sizes by status."""
    body, content_type = render_metrics(engine)
    return Response(content=body, media_type=content_type)
