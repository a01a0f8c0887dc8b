"""OpenAI-compatible chat completions with any catalogued model: the bundled one, an endpoint's,
or a fine-tuned one, so a tuned model can be tried the moment its job succeeds."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.deps import EngineDep, LocalQueueDep, SettingsDep
from app.errors import InvalidInput, UpstreamError
from app.llm import backend_for, find_model
from app.schemas.chat import ChatChoice, ChatCompletion, ChatCompletionRequest
from app.schemas.common import ErrorItem, ErrorResponse
from app.settings import Settings
from generators.base import Backend, Generation, SamplingParams
from generators.errors import GeneratorError
from generators.streaming import ChoiceDelta, StreamItem, stream

router = APIRouter(tags=["chat"])


@router.post(
    "/chat/completions",
    responses={
        404: {"model": ErrorResponse},
        429: {"model": ErrorResponse, "description": "In-process models are busy: Retry-After."},
        502: {"model": ErrorResponse},
        200: {
            "content": {"text/event-stream": {}},
            "description": "With `stream`: `chat.completion.chunk`s as each choice is made, "
            "then `[DONE]`; a model failing midway ends the stream with an `error` event.",
        },
    },
)
async def chat_completions(
    settings: SettingsDep, engine: EngineDep, queue: LocalQueueDep, body: ChatCompletionRequest
) -> Any:
    """Answer a chat with any model from GET /v1/models; `stream` sends chunks as they are made."""
    entry = find_model(settings, body.model, engine)
    check_ceilings(settings, body)
    backend = backend_for(settings, entry)
    params = sampling_params(body)
    with contextlib.ExitStack() as admitted:
        if entry.backend == "local":
            admitted.enter_context(queue.admit("this chat"))
        if body.stream:
            return await _streamed(backend, body, params, entry.id, admitted)
        try:
            generation = await backend.generate_one(body.messages, params)
        except GeneratorError as exc:
            raise _failed(body.model, exc) from exc
    return ChatCompletion(
        id=f"chatcmpl-{secrets.token_hex(12)}",
        created=int(time.time()),
        model=entry.id,
        choices=[
            ChatChoice(
                index=c.index,
                message={"role": "assistant", "content": c.text},
                finish_reason=c.finish_reason,
            )
            for c in generation.choices
        ],
        usage=_usage(generation),
    )


def sampling_params(body: ChatCompletionRequest) -> SamplingParams:
    return SamplingParams(
        max_tokens=body.max_completion_tokens or body.max_tokens or 256,
        temperature=body.temperature,
        top_p=body.top_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        stop=body.stop,
        n=body.n,
        seed=body.seed,
    )


def check_ceilings(settings: Settings, body: ChatCompletionRequest) -> None:
    """The configured ceilings on what one request may ask for (the schema states them too)."""
    asked = {
        "n": (body.n, settings.chat_max_n, "SELFINSTRUCT_CHAT_MAX_N"),
        "max_tokens": (body.max_tokens, settings.chat_max_tokens, "SELFINSTRUCT_CHAT_MAX_TOKENS"),
        "max_completion_tokens": (
            body.max_completion_tokens,
            settings.chat_max_tokens,
            "SELFINSTRUCT_CHAT_MAX_TOKENS",
        ),
    }
    for field, (value, ceiling, setting) in asked.items():
        if value is not None and value > ceiling:
            raise InvalidInput(
                f"{field}: {value} is above this server's ceiling of {ceiling} ({setting}).",
                errors=[ErrorItem(field=field, reason=f"at most {ceiling}")],
            )


def _failed(model: str, exc: GeneratorError) -> UpstreamError:
    return UpstreamError(f"The model '{model}' failed to answer: {exc}")


async def _streamed(
    backend: Backend,
    body: ChatCompletionRequest,
    params: SamplingParams,
    model_id: str,
    admitted: contextlib.ExitStack,
) -> StreamingResponse:
    """The answer as server-sent events, once the model has made its first text; the stream
    takes over the admission and gives it back after its last chunk."""
    items = stream(backend, body.messages, params)
    first = await _first(items, body.model)
    events = _events(first, items, _chunk_base(model_id), body, admitted.pop_all())
    # Started here, so its `finally` frees the model however the response ends, even when the
    # client leaves before the response begins.
    opening = await anext(events)
    return StreamingResponse(_after(opening, events), media_type="text/event-stream")


async def _first(items: AsyncIterator[StreamItem], model: str) -> StreamItem:
    """Wait for the first text before answering 200, so a model that fails at once (a prompt
    longer than its context, a server down) still gets an error status."""
    try:
        return await anext(items)
    except GeneratorError as exc:
        raise _failed(model, exc) from exc


def _chunk_base(model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }


def _usage(generation: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.total_tokens,
    }


async def _after(head: str, rest: AsyncGenerator[str, None]) -> AsyncIterator[str]:
    """`head`, already made, then the rest, which is closed however the response ends."""
    yield head
    async with aclosing(rest) as lines:
        async for line in lines:
            yield line


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _events(
    first: StreamItem,
    items: AsyncGenerator[StreamItem, None],
    base: dict[str, Any],
    body: ChatCompletionRequest,
    admitted: contextlib.ExitStack,
) -> AsyncGenerator[str, None]:
    """OpenAI's chunk sequence as the model makes it: a choice's first chunk carries the role,
    then its text, then its finish reason; `[DONE]` at the end."""

    def chunk(delta: ChoiceDelta, content: dict[str, str], finish: str | None) -> str:
        choice = {"index": delta.index, "delta": content, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    begun: set[int] = set()
    item = first
    try:
        while isinstance(item, ChoiceDelta):
            if item.index not in begun:
                begun.add(item.index)
                yield chunk(item, {"role": "assistant", "content": ""}, None)
            if item.text:
                yield chunk(item, {"content": item.text}, None)
            if item.finish_reason is not None:
                yield chunk(item, {}, item.finish_reason)
            item = await anext(items)
        if body.stream_options is not None and body.stream_options.include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(item)})
        yield "data: [DONE]\n\n"
    except GeneratorError as exc:
        # Headers are sent: the failure goes in the stream, where OpenAI's clients look for it.
        error = {"message": _failed(body.model, exc).detail, "type": "upstream_error"}
        yield _sse({"error": error})
    finally:
        try:
            await items.aclose()
        finally:
            admitted.close()
