"""Ablations: which group of a version's tasks helped, by tuning one model per group left out
(run as a recipe by a generation worker; fine-tunes by fine-tune workers)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, status

from app.api.deps import MAX_ID, SessionDep, SettingsDep
from app.schemas.ablations import AblationCreate, AblationPublic, AblationsPublic
from app.schemas.common import ErrorResponse
from app.services import ablations as svc
from app.services import recipes

router = APIRouter(prefix="/ablations", tags=["ablations"])
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses={422: {"model": ErrorResponse}})
def create_ablation(
    body: AblationCreate, session: SessionDep, settings: SettingsDep
) -> AblationPublic:
    """Check the request and state its cost (422 naming the field, `confirm` above
    SELFINSTRUCT_ABLATION_CONFIRM_ABOVE fine-tunes; nothing started), then queue it."""
    recipe = svc.create_ablation(session=session, settings=settings, body=body)
    return svc.ablation_public(session=session, recipe=recipe)


@router.get("")
def list_ablations(session: SessionDep) -> AblationsPublic:
    """List ablations, newest first (the last 100)."""
    data = [
        svc.ablation_public(session=session, recipe=r) for r in svc.list_ablations(session=session)
    ]
    return AblationsPublic(data=data, count=len(data))


@router.get("/{ablation_id}", responses=ERRORS)
def read_ablation(
    session: SessionDep,
    ablation_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Ablation id.")],
) -> AblationPublic:
    """Read an ablation: its cost and, per group, the change in win rate of the model tuned
    without it against the model tuned on everything, most helpful removal first. Its steps
    and their jobs are at GET /v1/recipes/{id}."""
    recipe = svc.get_ablation(session=session, ablation_id=ablation_id)
    return svc.ablation_public(session=session, recipe=recipe)


@router.post("/{ablation_id}/cancel", responses=ERRORS)
def cancel_ablation(
    session: SessionDep,
    ablation_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Ablation id.")],
) -> AblationPublic:
    """Cancel the ablation and the job it waits for (as its recipe's cancel does)."""
    recipe = svc.get_ablation(session=session, ablation_id=ablation_id)
    recipe = recipes.cancel_recipe(session=session, recipe=recipe)
    return svc.ablation_public(session=session, recipe=recipe)
