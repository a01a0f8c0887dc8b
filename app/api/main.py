"""Gathers the routers: `/v1/...` behind the write token, health and metrics outside it."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import require_token_for_writes
from app.api.errors import COMMON_ERRORS
from app.api.routes import (
    chat,
    datasets,
    documents,
    evaluations,
    fine_tuning,
    health,
    models,
    runs,
    tasks,
    workers,
)

api_router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_token_for_writes)],
    responses=COMMON_ERRORS,
)
api_router.include_router(datasets.router)
api_router.include_router(documents.router)
api_router.include_router(tasks.router)
api_router.include_router(runs.router)
api_router.include_router(models.router)
api_router.include_router(fine_tuning.router)
api_router.include_router(chat.router)
api_router.include_router(evaluations.router)

health_router = health.router
# Workers authenticate with their own token, so their routes sit outside the API token's router.
workers_router = workers.router
