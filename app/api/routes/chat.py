"""OpenAI-compatible chat completions with any catalogued model: the bundled one, an endpoint's,
or a fine-tuned one, so a tuned model can be tried the moment its job succeeds."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.deps import EngineDep, LocalQueueDep, SettingsDep
from app.errors import InvalidInput, UpstreamError
from app.llm import backend_for, find_model
from app.schemas import ChatChoice, ChatCompletion, ChatCompletionRequest, ErrorItem, ErrorResponse
from app.settings import Settings
from generators.base import SamplingParams
from generators.errors import GeneratorError

router = APIRouter(tags=["chat"])


@router.post(
    "/chat/completions",
    responses={
        404: {"model": ErrorResponse},
        429: {"model": ErrorResponse, "description": "In-process models are busy: Retry-After."},
        502: {"model": ErrorResponse},
        200: {"content": {"text/event-stream": {}}},
    },
)
async def chat_completions(
    settings: SettingsDep, engine: EngineDep, queue: LocalQueueDep, body: ChatCompletionRequest
) -> Any:
    """Answer a chat with any model from GET /v1/models; `stream` sends server-sent chunks."""
    entry = find_model(settings, body.model, engine)
    check_ceilings(settings, body)
    params = SamplingParams(
        max_tokens=body.max_completion_tokens or body.max_tokens or 256,
        temperature=body.temperature,
        top_p=body.top_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        stop=body.stop,
        n=body.n,
        seed=body.seed,
    )
    admitted = queue.admit("this chat") if entry.backend == "local" else contextlib.nullcontext()
    try:
        with admitted:
            generation = await backend_for(settings, entry).generate_one(body.messages, params)
    except GeneratorError as exc:
        raise UpstreamError(f"The model '{body.model}' failed to answer: {exc}") from exc
    completion = ChatCompletion(
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
        usage={
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.total_tokens,
        },
    )
    if not body.stream:
        return completion
    return StreamingResponse(_chunks(completion), media_type="text/event-stream")


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


async def _chunks(completion: ChatCompletion) -> AsyncIterator[str]:
    """The finished answer as OpenAI's chunk sequence: role, content, finish, [DONE]."""
    base = {
        "id": completion.id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": completion.model,
    }
    for choice in completion.choices:
        for delta, finish in (
            ({"role": "assistant", "content": ""}, None),
            ({"content": choice.message["content"]}, None),
            ({}, choice.finish_reason),
        ):
            chunk = {
                **base,
                "choices": [{"index": choice.index, "delta": delta, "finish_reason": finish}],
            }
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"
