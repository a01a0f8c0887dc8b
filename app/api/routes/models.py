"""The models runs can use, in OpenAI's list shape so `client.models.list()` works."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from app.api.deps import EngineDep, SettingsDep
from app.llm import ModelEntry, catalogue, probe, replica_health
from app.run_schemas import ModelPublic, ModelsPublic, ReplicaPublic
from app.settings import Settings

router = APIRouter(tags=["models"])
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
