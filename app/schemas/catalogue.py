"""The model catalogue as `GET /v1/models` shows it: OpenAI's model object and its servers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ReplicaPublic(BaseModel):
    """One server of a model's pool, as this process sees it."""

    base_url: str
    health: Literal["healthy", "failing", "cooling_down", "rate_limited"] = Field(
        description="cooling_down: failed and gets no work for a while; rate_limited: asked "
        "to wait (429 with Retry-After); failing: back from a cooldown, not yet answering."
    )
    in_flight: int
    concurrency_limit: int = Field(description="Current limit, lowered on 429s (AIMD).")
    max_concurrency: int
    served: int = Field(description="Attempts answered since the service started.")
    failed: int = Field(description="Attempts failed since the service started.")
    last_error: str | None


class ModelPublic(BaseModel):
    """OpenAI's model object, plus where it runs and whether it answers now."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    backend: str
    reachable: bool
    replicas: list[ReplicaPublic] = Field(
        default_factory=list, description="The servers of a remote model's pool."
    )


class ModelsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]
