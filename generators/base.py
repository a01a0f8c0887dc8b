"""The one interface every backend implements, its request and result models, and the registry.

A backend is a small class: an id, capability flags, a nested `Options` model and one async method,
`execute`, that turns a batch of validated prompts into results. `Backend.generate` wraps it with
validation, timing and accounting, so each backend only talks to its engine.

Choices: one `Generation` per prompt; with `n > 1` its `choices` list holds the `n` samples (the
OpenAI response shape), and `text`/`finish_reason` read the first one. Token counts of a
`Generation` cover all its choices, as the OpenAI `usage` object does.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, TypeAlias, overload

from pydantic import BaseModel, ConfigDict, Field, field_validator

from generators.chat_template import ChatTemplate
from generators.errors import GeneratorError, UnknownBackend, UnsupportedRequest


class ChatMessage(BaseModel):
    """One turn of a chat prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


# Raw text for continuation models, or a list of chat turns for chat models.
Prompt: TypeAlias = str | Sequence[ChatMessage | Mapping[str, str]]
NormalizedPrompt: TypeAlias = str | list[ChatMessage]


class StructuredOutput(BaseModel):
    """A shape the answer must take, for backends that can enforce it: `json_schema` goes to
    OpenAI-compatible servers that take `response_format` (an endpoint setting says which do),
    `grammar` (GBNF, the same shape) to llama.cpp, in-process or served. A backend that can do
    neither ignores it; the caller parses the text either way."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Names the schema.")
    json_schema: dict[str, Any]
    grammar: str


class SamplingParams(BaseModel):
    """Sampling parameters with OpenAI's names, meanings and defaults (except `max_tokens`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(
        default=256, ge=1, le=32768, description="Most tokens to generate per choice."
    )
    temperature: float = Field(
        default=1.0, ge=0.0, le=2.0, description="0 picks the likeliest token."
    )
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    presence_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Penalty for any repeat."
    )
    frequency_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Penalty per repeat."
    )
    stop: Sequence[str] = Field(default=(), description="Strings that end a choice (not included).")
    n: int = Field(default=1, ge=1, le=32, description="Choices to sample per prompt.")
    seed: int | None = Field(default=None, description="Makes sampling repeatable where supported.")
    structured: StructuredOutput | None = Field(
        default=None, description="Constrain the answer where the backend can (see the class)."
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_tuple(cls, value: object) -> object:
        """Accept a single string, as the OpenAI API does."""
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        return value

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: Sequence[str]) -> tuple[str, ...]:
        if any(s == "" for s in value):
            raise ValueError("stop: an empty string would end every choice at once; remove it")
        return tuple(value)


FinishReason: TypeAlias = Literal["stop", "length"]


class Choice(BaseModel):
    """One sampled continuation."""

    text: str
    # "length" when max_tokens (or the context window) cut it off; "stop" for a stop string,
    # end-of-text, or any other server reason (content filters, tool calls).
    finish_reason: FinishReason
    index: int = 0


class Generation(BaseModel):
    """What one prompt produced, with everything needed to trace and bill it."""

    choices: list[Choice]
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_s: float = Field(ge=0.0, description="Wall time of the successful call and retries.")
    model: str = Field(description="The model id that answered.")
    backend: str
    request_id: str | None = None
    attempts: int = Field(default=1, ge=1, description="Requests sent, failed ones included.")
    usage_estimated: bool = Field(
        default=False, description="The server sent no usage; counts guessed."
    )

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> FinishReason:
        return self.choices[0].finish_reason

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def retries(self) -> int:
        return self.attempts - 1


@dataclass
class BackendStats:
    """Running totals of one backend instance, so a caller can report spend and failures."""

    calls: int = 0  # prompts answered
    failed_calls: int = 0  # prompts that ended in an error
    attempts: int = 0  # requests sent, including failed ones
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0

    def snapshot(self) -> dict[str, float | int]:
        return asdict(self)


def normalize_prompt(prompt: Prompt) -> NormalizedPrompt:
    """Validate a prompt once, so backends only see `str` or `list[ChatMessage]`."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and prompt:
        return [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m) for m in prompt]
    raise UnsupportedRequest(
        f"prompt: expected text or a non-empty list of {{role, content}} messages, "
        f"got {type(prompt).__name__}"
    )


def estimate_tokens(text: str) -> int:
    """A rough token count (about 4 characters a token in English, 1-2 a token in CJK text),
    used only where a server reports no usage and to size rate-limit reservations."""
    if text.isascii():
        return max(1, len(text) // 4)
    ascii_chars = len(text.encode("ascii", "ignore"))
    return max(1, ascii_chars // 4 + (len(text) - ascii_chars))


def prompt_text(prompt: NormalizedPrompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m.content for m in prompt)


class Backend(ABC):
    """Base class of all generator backends: subclass, set the class attributes, nest an
    `Options` model and implement `execute`; then `register_backend(name, cls)`."""

    backend_id: ClassVar[str]
    supports_completion: ClassVar[bool] = True
    supports_chat: ClassVar[bool] = True
    # Whether requests run concurrently; a local engine runs one prompt at a time.
    supports_concurrency: ClassVar[bool] = True

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any):
        if options is not None and kwargs:
            raise TypeError("pass options either as one Options object/mapping or as keywords")
        raw = options if options is not None else kwargs
        self.options = (
            raw if isinstance(raw, self.Options) else self.Options.model_validate(dict(raw or {}))
        )
        self.stats = BackendStats()
        self.pending = 0  # prompts handed to `generate` and not answered yet (waiting included)

    def capacity(self) -> int:
        """Prompts worth having in flight at once: a caller that keeps `pending` at this keeps
        the engine busy without queueing work it cannot start. Pools override it."""
        return 8 if self.supports_concurrency else 1

    @property
    @abstractmethod
    def model_id(self) -> str:
        """The model id this backend asks for (the answer may name a more specific one)."""

    @abstractmethod
    async def execute(
        self, prompts: list[NormalizedPrompt], params: SamplingParams
    ) -> list[Generation | GeneratorError]:
        """Generate for each prompt; return a result or the error for each, in order."""

    async def check(self) -> bool:
        """Whether the backend can serve requests now, answered quickly without generating."""
        return True

    async def chat_template(self) -> ChatTemplate | None:
        """The model's own chat template, where the backend can know it (None otherwise)."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections or handles; the backend may not be used afterwards."""

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @overload
    async def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | Mapping[str, Any] | None = None,
        *,
        return_exceptions: Literal[False] = False,
    ) -> list[Generation]: ...

    @overload
    async def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | Mapping[str, Any] | None = None,
        *,
        return_exceptions: Literal[True],
    ) -> list[Generation | GeneratorError]: ...

    async def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | Mapping[str, Any] | None = None,
        *,
        return_exceptions: bool = False,
    ) -> list[Generation] | list[Generation | GeneratorError]:
        """Generate for a batch of prompts, one `Generation` per prompt, in order.

        All prompts are attempted even when some fail, so the tokens spent are counted; then the
        first error is raised, unless `return_exceptions` puts each error in its prompt's place
        (as `asyncio.gather` does).
        """
        if isinstance(prompts, str):
            raise UnsupportedRequest("prompts: pass a list of prompts, not one string")
        sampling = (
            params if isinstance(params, SamplingParams) else SamplingParams(**dict(params or {}))
        )
        normalized = [normalize_prompt(p) for p in prompts]
        for prompt in normalized:
            self._check_capability(prompt)
        if not normalized:
            return []
        started = time.perf_counter()
        self.pending += len(normalized)
        try:
            results = await self.execute(normalized, sampling)
        finally:
            self.pending -= len(normalized)
        if len(results) != len(normalized):
            raise GeneratorError(
                f"{type(self).__name__}.execute returned {len(results)} results for "
                f"{len(normalized)} prompts"
            )
        self._account(results, time.perf_counter() - started)
        if return_exceptions:
            return results
        generations = []
        for result in results:
            if isinstance(result, GeneratorError):
                raise result
            generations.append(result)
        return generations

    async def generate_one(
        self, prompt: Prompt, params: SamplingParams | Mapping[str, Any] | None = None
    ) -> Generation:
        """Generate for a single prompt."""
        (result,) = await self.generate([prompt], params)
        return result

    def _check_capability(self, prompt: NormalizedPrompt) -> None:
        if isinstance(prompt, str) and not self.supports_completion:
            raise UnsupportedRequest(
                f"backend {self.backend_id!r} has no raw completion; send chat messages instead"
            )
        if not isinstance(prompt, str) and not self.supports_chat:
            raise UnsupportedRequest(
                f"backend {self.backend_id!r} has no chat mode; send raw text instead"
            )

    def _account(self, results: Sequence[Generation | GeneratorError], elapsed: float) -> None:
        self.stats.latency_s += elapsed
        for observe in CALL_OBSERVERS:
            for result in results:
                observe(self, result)
        for result in results:
            if isinstance(result, Generation):
                self.stats.calls += 1
                self.stats.attempts += result.attempts
                self.stats.retries += result.attempts - 1
                self.stats.prompt_tokens += result.prompt_tokens
                self.stats.completion_tokens += result.completion_tokens
            else:
                self.stats.failed_calls += 1
                self.stats.attempts += result.attempts
                self.stats.retries += max(0, result.attempts - 1)


# Called with every answered or failed prompt of any backend, in the process that sent it: the
# service's metrics register here, so backends need not know about them.
CALL_OBSERVERS: list[Callable[[Backend, Generation | GeneratorError], None]] = []

_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(name: str, cls: type[Backend]) -> None:
    """Make a backend class available by name (the name settings and runs refer to)."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"register_backend({name!r}, ...): {cls!r} is not a Backend subclass")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"backend name {name!r} is already registered to {existing.__name__}")
    _REGISTRY[name] = cls


def get_backend_class(name: str) -> type[Backend]:
    """The backend class registered under `name`, or an error listing the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownBackend(f"backend {name!r} is not registered; known: {known}") from None


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def create_backend(name: str, options: BaseModel | Mapping[str, Any] | None = None) -> Backend:
    """Build a backend by registered name from plain options (what `app/settings.py` calls)."""
    return get_backend_class(name)(options)
