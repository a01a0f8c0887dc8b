"""One follow loop for every server-sent event stream (a run's progress, a fine-tune job's
events): read what came after the last id sent, send it, and end once the thing is finished
and a last read found nothing more (its final events are written with its final status)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from fastapi import Request

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
