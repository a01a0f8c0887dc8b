"""Streaming: each choice's text as it is made, for a caller that shows it while it comes (the
chat route), where `Backend.generate` hands over every choice at once.

`stream(backend, prompt, params)` yields `ChoiceDelta`s, choice after choice or interleaved, and
last the whole `Generation` that `generate` would have returned, counted the same way (stats,
metrics). A backend that can send text as its engine makes it implements `StreamingBackend`; any
other backend's choices come whole once it has answered, which is correct, only later.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from generators.base import (
    Backend,
    FinishReason,
    Generation,
    NormalizedPrompt,
    Prompt,
    SamplingParams,
    normalize_prompt,
)
from generators.errors import GeneratorError


@dataclass(frozen=True)
class ChoiceDelta:
    """New text of choice `index`; its last delta carries the `finish_reason`."""

    index: int
    text: str = ""
    finish_reason: FinishReason | None = None


StreamItem: TypeAlias = ChoiceDelta | Generation


@runtime_checkable
class StreamingBackend(Protocol):
    """A backend that streams: deltas as its engine makes them, then the whole `Generation`."""

    def stream_prompt(
        self, prompt: NormalizedPrompt, params: SamplingParams
    ) -> AsyncGenerator[StreamItem, None]: ...


async def stream(
    backend: Backend,
    prompt: Prompt,
    params: SamplingParams | Mapping[str, Any] | None = None,
) -> AsyncGenerator[StreamItem, None]:
    """Generate for one prompt as `Backend.generate_one` does, yielding text as it comes.

    Closing the iterator early (a client that went away) stops the backend's work on it.
    """
    sampling = (
        params if isinstance(params, SamplingParams) else SamplingParams(**dict(params or {}))
    )
    normalized = normalize_prompt(prompt)
    backend._check_capability(normalized)
    source = (
        backend.stream_prompt(normalized, sampling)
        if isinstance(backend, StreamingBackend)
        else _whole(backend, normalized, sampling)
    )
    started = time.perf_counter()
    backend.pending += 1
    try:
        async with aclosing(source) as items:
            async for item in items:
                if isinstance(item, Generation):
                    backend._account([item], time.perf_counter() - started)
                yield item
    except GeneratorError as exc:
        backend._account([exc], time.perf_counter() - started)
        raise
    finally:
        backend.pending -= 1


async def _whole(
    backend: Backend, prompt: NormalizedPrompt, params: SamplingParams
) -> AsyncGenerator[StreamItem, None]:
    """A backend that cannot stream: its answer, replayed as one delta per choice."""
    (result,) = await backend.execute([prompt], params)
    if isinstance(result, GeneratorError):
        raise result
    for choice in result.choices:
        yield ChoiceDelta(choice.index, choice.text, choice.finish_reason)
    yield result
