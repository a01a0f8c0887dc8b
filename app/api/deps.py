"""Typed dependencies: settings, sessions, auth, and lookups that 404 in one place.

The ones that do no I/O are `async def`: FastAPI runs a plain `def` dependency in a worker
thread, and each such hop cost a read of one task about 0.1 ms of CPU, a tenth of its budget.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.errors import Unauthorized
from app.limits import LocalQueue
from app.models import Dataset
from app.schemas.common import MAX_ID
from app.services.datasets import get_dataset
from app.settings import Settings

T = TypeVar("T")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="Task id.")]


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_local_queue(request: Request) -> LocalQueue:
    queue: LocalQueue = request.app.state.local_queue
    return queue


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
LocalQueueDep = Annotated[LocalQueue, Depends(get_local_queue)]


async def get_db(engine: EngineDep) -> AsyncIterator[Session]:
    """A session per request. Opening one does no I/O (it connects at its first query). The
    close gives the connection back with a rollback: on PostgreSQL a round trip, so in a worker
    thread; on SQLite a local call of microseconds with no transaction open (a read never
    opens one), cheaper than the hop, so on the event loop."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
    finally:
        if engine.dialect.name == "sqlite":
            session.close()
        else:
            await run_in_threadpool(session.close)


SessionDep = Annotated[Session, Depends(get_db)]


async def in_session(engine: Engine, service: Callable[..., T], /, **kwargs: Any) -> T:
    """`service(session=..., **kwargs)` with a session of its own, in one worker thread.

    For the hottest reads (a task, a page of tasks), routes that are `async def` and call
    this instead of taking `SessionDep`: FastAPI would give a plain `def` route one thread for
    its dependencies, one for the route, one to check the returned model and one to close
    the session. Each hop cost about 0.1 ms of CPU; one is left. The model is checked and
    serialized on the event loop, which for these small models is cheaper than the hop."""

    def work() -> T:
        with Session(engine, expire_on_commit=False) as session:
            return service(session=session, **kwargs)

    return await run_in_threadpool(work)


def release(session: Session) -> None:
    """Give the request's connection back before a streamed body (an export, a bundle, an event
    stream). The session would otherwise hold it until the body ends, while the stream reads
    with connections of its own: with enough downloads at once every pooled connection is held
    by a request waiting for a second one, and all of them wait out the pool's timeout. The
    objects already loaded stay readable."""
    session.close()


READ_COOKIE = "selfinstruct_token"  # the dashboard's token, for reads the browser makes itself


async def require_token(request: Request, settings: SettingsDep) -> None:
    """Applied to the whole API router so every new route is covered too: changes need the
    token whenever one is set, reads only with `private_reads`.

    A read may carry the token in a cookie instead of the header: the browser's own requests
    (event streams, download links) cannot set headers. A change never accepts the cookie, so
    another site cannot make a browser change anything (no cross-site request forgery).
    """
    if settings.api_token is None:
        return
    read = request.method in SAFE_METHODS
    if read and not settings.private_reads:
        return
    token = bearer_token(request) or (request.cookies.get(READ_COOKIE) if read else None)
    if not token:
        what = "This read needs" if read else "This route changes state and needs"
        raise Unauthorized(
            f"{what} `Authorization: Bearer <token>` (the server's SELFINSTRUCT_API_TOKEN)."
        )
    if not token_matches(token, settings.api_token):
        raise Unauthorized("The bearer token is wrong; use the server's SELFINSTRUCT_API_TOKEN.")


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def token_matches(given: str, expected: SecretStr) -> bool:
    """In constant time, so the comparison leaks nothing of the secret."""
    return hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


def dataset_by_name(
    session: SessionDep, name: Annotated[str, Path(description="Dataset name.")]
) -> Dataset:
    return get_dataset(session=session, name=name)


DatasetDep = Annotated[Dataset, Depends(dataset_by_name)]
