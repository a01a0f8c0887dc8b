"""Recipes: named steps of child jobs (generate, judge, version, finetune, evaluate), run in
rounds by a generation worker."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from app import leases
from app.api.deps import MAX_ID, EngineDep, SessionDep, SettingsDep, release
from app.api.sse import event_stream
from app.errors import PayloadTooLarge
from app.models import Recipe
from app.schemas.common import ErrorResponse
from app.schemas.recipes import RecipePublic, RecipesPublic
from app.services import recipes as svc

router = APIRouter(prefix="/recipes", tags=["recipes"])
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}
MAX_RECIPE_BYTES = 1 << 20

RECIPE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A recipe (RecipeCreate), as JSON or as the same document in YAML "
        "(`content-type: application/yaml`); at most 1 MiB.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/RecipeCreate"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/RecipeCreate"}},
        },
    }
}


def recipe_by_id(
    session: SessionDep,
    recipe_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Recipe id.")],
) -> Recipe:
    return svc.get_recipe(session=session, recipe_id=recipe_id)


RecipeDep = Annotated[Recipe, Depends(recipe_by_id)]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=RECIPE_BODY,
    responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def create_recipe(
    request: Request, session: SessionDep, settings: SettingsDep
) -> RecipePublic:
    """Check a recipe whole (422 naming the step and field, nothing started), then queue it; a
    generation worker runs its steps as jobs. Follow it at GET /v1/recipes/{id}."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_RECIPE_BYTES:
            raise PayloadTooLarge(f"A recipe is at most {MAX_RECIPE_BYTES} bytes.")
    body = svc.parse_document(raw, request.headers.get("content-type", ""))

    def create() -> RecipePublic:
        recipe = svc.create_recipe(session=session, settings=settings, body=body)
        return svc.recipe_public(session=session, recipe=recipe)

    return await run_in_threadpool(create)


@router.get("")
def list_recipes(session: SessionDep) -> RecipesPublic:
    """List recipes, newest first (the last 100)."""
    data = [svc.recipe_public(session=session, recipe=r) for r in svc.list_recipes(session=session)]
    return RecipesPublic(data=data, count=len(data))


@router.get("/{recipe_id}", responses=ERRORS)
def read_recipe(session: SessionDep, recipe: RecipeDep) -> RecipePublic:
    """Read a recipe: its steps round by round with their jobs and statuses, the versions it
    made and the round table."""
    return svc.recipe_public(session=session, recipe=recipe)


@router.post("/{recipe_id}/cancel", responses=ERRORS)
def cancel_recipe(session: SessionDep, recipe: RecipeDep) -> RecipePublic:
    """Cancel the recipe and the child job it is waiting for; a finished one is left as it is."""
    recipe = svc.cancel_recipe(session=session, recipe=recipe)
    return svc.recipe_public(session=session, recipe=recipe)


@router.get(
    "/{recipe_id}/events",
    response_class=EventSourceResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "status, child_created, step_done, round and end events.",
        },
    },
)
async def recipe_events(
    request: Request,
    session: SessionDep,
    engine: EngineDep,
    recipe: RecipeDep,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    poll_seconds: Annotated[
        float, Query(allow_inf_nan=False, description="Clamped to 0.05-5 s.")
    ] = 0.5,
) -> EventSourceResponse:
    """Stream what the recipe does as server-sent events until it ends (resumes: Last-Event-ID)."""
    assert recipe.id is not None
    recipe_id = recipe.id
    release(session)
    return event_stream(
        request,
        rows_after=lambda after: svc.events_after(engine, recipe_id=recipe_id, after=after),
        encode=lambda e: (e.id, e.kind, svc.event_public(e)),
        status=lambda: svc.recipe_status(engine, recipe_id=recipe_id),
        final=leases.FINAL,
        last_event_id_header=last_event_id,
        poll_seconds=poll_seconds,
    )
