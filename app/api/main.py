"""Gathers the routers: `/v1/...` behind the API token, health and metrics outside it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.api.deps import require_token
from app.api.errors import COMMON_ERRORS
from app.api.routes import (
    ablations,
    chat,
    datasets,
    documents,
    evaluations,
    fine_tuning,
    health,
    judgements,
    models,
    recipes,
    runs,
    strategies,
    tasks,
    versions,
    workers,
)
from app.schemas.datasets import DocumentsCreate, SeedTask
from app.schemas.recipes import RecipeCreate
from app.settings import Settings

api_router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_token)],
    responses=COMMON_ERRORS,
)
api_router.include_router(datasets.router)
api_router.include_router(documents.router)
api_router.include_router(tasks.router)
api_router.include_router(versions.router)
api_router.include_router(runs.router)
api_router.include_router(strategies.router)
api_router.include_router(models.router)
api_router.include_router(fine_tuning.router)
api_router.include_router(chat.router)
api_router.include_router(evaluations.router)
api_router.include_router(judgements.router)
api_router.include_router(recipes.router)
api_router.include_router(ablations.router)

# Bodies the routes read by hand (they take several content types), so FastAPI does not see
# their models; the routes' `openapi_extra` refers to these by name.
HAND_READ_BODIES: tuple[type[BaseModel], ...] = (SeedTask, DocumentsCreate, RecipeCreate)


def openapi_builder(app: FastAPI) -> Any:
    """FastAPI's schema plus the hand-read bodies' models, so every `$ref` resolves."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in HAND_READ_BODIES:
            found = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in found.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components.setdefault(model.__name__, found)
        _state_ceilings(schema, app.state.settings)
        app.openapi_schema = schema
        return schema

    return build


def _state_ceilings(schema: dict[str, Any], settings: Settings) -> None:
    """Ceilings that are settings (chat `n` and `max_tokens`, page sizes): the schema states
    this server's values."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param.get("in") == "query" and param.get("name") == "limit":
                    bounds = param.setdefault("schema", {})
                    bounds.setdefault("maximum", settings.page_size_max)  # fixed ones stay
    components = schema["components"]["schemas"]
    target = components.get("RunCreate", {}).get("properties", {}).get("target", {})
    if target:
        target["maximum"] = settings.max_run_target
    job = components.get("FineTuningJobCreate", {}).get("properties", {})
    if "devices" in job:
        job["devices"]["maximum"] = settings.finetune_max_devices
    fields = components.get("ChatCompletionRequest", {}).get("properties", {})
    ceilings = {
        "n": settings.chat_max_n,
        "max_tokens": settings.chat_max_tokens,
        "max_completion_tokens": settings.chat_max_tokens,
    }
    for name, ceiling in ceilings.items():
        field = fields.get(name, {})
        for branch in [field, *field.get("anyOf", [])]:
            if branch.get("type") == "integer":
                branch["maximum"] = ceiling


health_router = health.router
# Workers authenticate with their own token, so their routes sit outside the API token's router.
workers_router = workers.router
