"""Typed dependencies: settings, sessions, auth, and lookups that 404 in one place."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.errors import Unauthorized
from app.limits import LocalQueue
from app.models import Dataset
from app.services.datasets import get_dataset
from app.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_ID = 2**63 - 1  # the largest id a database column holds; past it a lookup cannot match
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="Task id.")]


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_local_queue(request: Request) -> LocalQueue:
    queue: LocalQueue = request.app.state.local_queue
    return queue


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
LocalQueueDep = Annotated[LocalQueue, Depends(get_local_queue)]


def get_db(engine: EngineDep) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def require_token_for_writes(request: Request, settings: SettingsDep) -> None:
    """Applied to the whole API router so every new state-changing route is covered too."""
    if request.method in SAFE_METHODS or settings.api_token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = settings.api_token.get_secret_value()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "This route changes state and needs `Authorization: Bearer <token>` "
            "(the server's SELFINSTRUCT_API_TOKEN)."
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("The bearer token is wrong; use the server's SELFINSTRUCT_API_TOKEN.")


def dataset_by_name(
    session: SessionDep, name: Annotated[str, Path(description="Dataset name.")]
) -> Dataset:
    return get_dataset(session=session, name=name)


DatasetDep = Annotated[Dataset, Depends(dataset_by_name)]
