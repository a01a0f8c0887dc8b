"""Chat completions in OpenAI's shape."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError

from generators.base import ChatMessage

# --- chat completions (OpenAI's shape) ---


# Fields some clients use to pick a server. Ignoring them would let a client believe it chose
# the host; refusing them says plainly that only SELFINSTRUCT_ENDPOINTS picks servers.
SERVER_FIELDS = ("base_url", "api_base", "api_url", "url", "endpoint", "host")


StopText = Annotated[str, Field(min_length=1)]


class ChatStreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(
        False, description="End the stream with a chunk holding `usage` and no choices."
    )


class ChatCompletionRequest(BaseModel):
    # Unknown OpenAI fields (user, logprobs...) are ignored: clients send them routinely.
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _no_server_choice(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in SERVER_FIELDS:
                if name in data:
                    raise PydanticCustomError(
                        "server_not_selectable",
                        "`{field}` is not accepted: the server's SELFINSTRUCT_ENDPOINTS decide "
                        "which hosts are called; name a model from GET /v1/models instead",
                        {"field": name},
                    )
        return data

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(
        None, ge=1, le=32768, description="At most SELFINSTRUCT_CHAT_MAX_TOKENS (default 4096)."
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, le=32768, description="At most SELFINSTRUCT_CHAT_MAX_TOKENS (default 4096)."
    )
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: StopText | list[StopText] | None = Field(
        None, description="Text that ends a choice (left out of it); an empty one would end all."
    )
    n: int = Field(1, ge=1, le=32, description="At most SELFINSTRUCT_CHAT_MAX_N (default 8).")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Sampling seed (uint32).")
    stream: bool = Field(
        False,
        description="Send server-sent `chat.completion.chunk`s as the tokens are made, each with "
        "its choice's `index`; with n > 1 the choices may come one after another.",
    )
    stream_options: ChatStreamOptions | None = None


class ChatChoice(BaseModel):
    index: int
    message: dict[str, str]
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, int]
