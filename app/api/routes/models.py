"""The models runs can use, in OpenAI's list shape so `client.models.list()` works, and the
deletion of fine-tuned ones (`client.models.delete()`)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from app.api.deps import EngineDep, SessionDep, SettingsDep
from app.finetune.schemas import ModelDeleted
from app.llm import ModelEntry, catalogue, probe, replica_health
from app.models import FineTuningJobRow
from app.schemas.catalogue import ModelPublic, ModelsPublic, ReplicaPublic
from app.schemas.common import ErrorResponse
from app.services import tuned_models as tuned_svc
from app.settings import Settings

router = APIRouter(tags=["models"])
DELETE_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "The model was not fine-tuned here."},
    404: {"model": ErrorResponse, "description": "No model has this id."},
    409: {"model": ErrorResponse, "description": "A queued or running job uses the model."},
}
CREATED = 1_735_689_600  # a fixed epoch second: the catalogue has no creation history


@router.get("/models")
async def list_models(settings: SettingsDep, engine: EngineDep) -> ModelsPublic:
    """List the bundled, configured and fine-tuned models, with reachability and replicas."""
    entries = await asyncio.to_thread(catalogue, settings, engine)
    reachable = await asyncio.gather(*(probe(settings, e) for e in entries))
    return ModelsPublic(
        data=[_public(settings, e, ok) for e, ok in zip(entries, reachable, strict=True)]
    )


def _public(settings: Settings, entry: ModelEntry, reachable: bool) -> ModelPublic:
    return ModelPublic(
        id=entry.id,
        created=entry.created or CREATED,
        owned_by=entry.owned_by,
        backend=entry.backend,
        reachable=reachable,
        replicas=[ReplicaPublic.model_validate(r) for r in replica_health(settings, entry)],
    )


def tuned_model_by_id(
    session: SessionDep,
    settings: SettingsDep,
    model: Annotated[str, Path(description="A fine-tuned model id (ft:...).")],
) -> FineTuningJobRow:
    return tuned_svc.get_tuned_model(session=session, settings=settings, model_id=model)


TunedModelDep = Annotated[FineTuningJobRow, Depends(tuned_model_by_id)]


# `:path` so that an id with a slash (an endpoint's `org/model`) reaches the 403, not a 404.
@router.delete("/models/{model:path}", responses=DELETE_ERRORS)
def delete_model(session: SessionDep, settings: SettingsDep, job: TunedModelDep) -> ModelDeleted:
    """Delete a fine-tuned model and its files.

    It leaves GET /v1/models and chat answers 404 for it; the job that made it stays, with its
    `fine_tuned_model` cleared and an event saying so. Models not tuned here (the bundled one,
    an endpoint's, a base model folder) are refused with 403, as OpenAI refuses models you do
    not own; 409 while a queued or running run, judgement job, evaluation or fine-tune job uses
    the model.
    """
    return ModelDeleted(
        id=tuned_svc.delete_tuned_model(session=session, settings=settings, job=job)
    )
