"""One follow loop for every server-sent event stream (a run's progress, a fine-tune job's
events): read what came after the last id sent, send it, and end once the thing is finished
and a last read found nothing more (its final events are written with its final status)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse

# (id, event name, JSON data) of one stored event
Event = tuple[int, str, str]


async def follow(
    request: Request,
    *,
    read_after: Callable[[int], list[Event]],
    finished: Callable[[], bool],
    after: int = 0,
    poll_s: float = 0.5,
) -> AsyncIterator[dict[str, str]]:
    """Events in id order from `after` on; the database is read in a thread, never in the loop."""
    while not await request.is_disconnected():
        events = await asyncio.to_thread(read_after, after)
        for event_id, name, data in events:
            after = event_id
            yield {"id": str(event_id), "event": name, "data": data}
        if events:
            continue
        if await asyncio.to_thread(finished):
            if not await asyncio.to_thread(read_after, after):
                return
            continue
        await asyncio.sleep(poll_s)


def last_event_id(header: str | None) -> int:
    """Where a reconnecting client left off (`Last-Event-ID`), or the start."""
    return int(header) if header and header.isdigit() else 0


def event_stream(
    request: Request,
    *,
    rows_after: Callable[[int], Iterable[Any]],
    encode: Callable[[Any], tuple[int, str, Any]],
    status: Callable[[], str | None],
    final: Collection[str],
    last_event_id_header: str | None,
    poll_seconds: float = 0.5,
) -> EventSourceResponse:
    """The stream of a thing's stored events: `rows_after(id)` reads them, `encode(row)` names
    each (id, event name, payload), and the stream ends once `status()` is final or the thing is
    gone. Every event stream of the API is this one, so they resume and end alike."""

    def read_after(after: int) -> list[Event]:
        events = []
        for row in rows_after(after):
            event_id, name, payload = encode(row)
            if isinstance(payload, BaseModel):
                payload = payload.model_dump(mode="json")
            events.append((event_id, name, json.dumps(payload, ensure_ascii=False)))
        return events

    def finished() -> bool:
        state = status()
        return state is None or state in final

    stream = follow(
        request,
        read_after=read_after,
        finished=finished,
        after=last_event_id(last_event_id_header),
        poll_s=min(max(poll_seconds, 0.05), 5.0),
    )
    return EventSourceResponse(stream, ping=15)
