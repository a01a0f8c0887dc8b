"""The `openai` backend: any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, OpenAI).

Raw text goes to `/completions`, chat messages to `/chat/completions`, one request per prompt,
run concurrently up to `max_concurrency`. Servers that ignore `n` (llama.cpp's) get follow-up
requests until each prompt has its `n` choices.

Failures: 429, 408, 5xx (but 501), connection errors and timeouts are retried with jittered
exponential backoff or the server's `Retry-After`; an unusable 2xx body is retried
`bad_response_retries` times; other 4xx fail at once with the server's error text.

Replicas: `replicas` lists more base URLs serving the same model (one vLLM or llama.cpp
deployment scaled out). Each attempt takes a slot on the least-loaded live replica
(`generators.pool`); a retry after a failure goes to another replica at once when one is live,
and waits the backoff only when none is.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import ssl
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import certifi
import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from generators.base import (
    Backend,
    Choice,
    FinishReason,
    Generation,
    NormalizedPrompt,
    SamplingParams,
    estimate_tokens,
    prompt_text,
    register_backend,
)
from generators.chat_template import ChatTemplate
from generators.errors import (
    BadResponse,
    GeneratorError,
    RequestRejected,
    RetryBudgetExhausted,
)
from generators.pool import Outcome, Replica, ReplicaPool, shared_replica
from generators.pool import capacity as pool_capacity
from generators.ratelimit import RateLimiter, shared_rate_limiter
from generators.retry import RetryPolicy, is_retryable_status, parse_retry_after, retry_delay

_ERROR_TEXT_LIMIT = 500
_CONNECTIONS_PER_CLIENT = 8


@dataclass
class _Reply:
    """A parsed 2xx answer and what it cost to get it."""

    data: dict[str, Any]
    request_id: str | None
    attempts: int
    choices: list[Choice]


def _normalize_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"base_url: {value!r} is not an http(s) URL; use e.g. http://127.0.0.1:8000/v1"
        )
    value = value.rstrip("/")
    return value + "/v1" if parts.path in ("", "/") else value


class ReplicaOptions(BaseModel):
    """One more server of the same model; its own concurrency, or the endpoint's."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    max_concurrency: int | None = Field(default=None, ge=1, le=1024)

    @field_validator("base_url")
    @classmethod
    def _normalize_base_url(cls, value: str) -> str:
        return _normalize_url(value)


class OpenAIBackend(Backend):
    """Generates through an OpenAI-compatible HTTP API with `httpx.AsyncClient`."""

    backend_id = "openai"
    supports_completion = True
    supports_chat = True

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        base_url: str = Field(
            description="API root including the version, e.g. http://127.0.0.1:8000/v1; "
            "a URL with no path gets /v1 appended."
        )
        replicas: list[ReplicaOptions] = Field(
            default_factory=list,
            description="More base URLs serving the same model; requests go to the least "
            "loaded live one.",
        )
        api_key: SecretStr | None = Field(default=None, description="Sent as a Bearer token.")
        model: str | None = Field(
            default=None, description="Model to ask for; None lets a single-model server choose."
        )
        timeout_s: float = Field(default=120.0, gt=0, description="Per-request read/write timeout.")
        connect_timeout_s: float = Field(default=10.0, gt=0)
        max_concurrency: int = Field(
            default=8, ge=1, le=1024, description="Requests in flight at once."
        )
        max_retries: int = Field(default=5, ge=0, le=100)
        backoff_base_s: float = Field(default=0.5, ge=0)
        backoff_max_s: float = Field(default=30.0, ge=0)
        retry_after_max_s: float = Field(default=60.0, ge=0)
        bad_response_retries: int = Field(default=1, ge=0)
        requests_per_minute: int | None = Field(
            default=None,
            ge=1,
            description="Client-side limit shared by all backends on this URL+key.",
        )
        tokens_per_minute: int | None = Field(
            default=None,
            ge=1,
            description="Client-side limit shared by all backends on this URL+key.",
        )
        extra_body: dict[str, Any] = Field(
            default_factory=dict,
            description="Server-specific request fields, e.g. {'top_k': 40} for llama.cpp/vLLM.",
        )
        headers: dict[str, str] = Field(default_factory=dict)
        chat_template: str | None = Field(
            default=None,
            description="The served model's Jinja chat template, for raw-template prompts "
            "(strategy magpie); None asks the server (llama.cpp's GET /props).",
        )
        structured_output: Literal["none", "json_schema", "grammar"] = Field(
            default="none",
            description="How the server constrains an answer to a shape (the judge's): "
            "json_schema sends `response_format` (OpenAI, vLLM), grammar sends a GBNF `grammar` "
            "(llama.cpp's servers); none leaves the answer free and the caller parses it.",
        )

        @field_validator("base_url")
        @classmethod
        def _normalize_base_url(cls, value: str) -> str:
            return _normalize_url(value)

        @model_validator(mode="after")
        def _distinct_replicas(self) -> OpenAIBackend.Options:
            urls = [self.base_url, *(r.base_url for r in self.replicas)]
            doubled = sorted({u for u in urls if urls.count(u) > 1})
            if doubled:
                raise ValueError(f"replicas: {doubled[0]} is listed twice; list each URL once")
            return self

    options: Options  # type: ignore[assignment]  # narrowed to this backend's options

    def __init__(self, options: BaseModel | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        opts = self.options
        self.retry_policy = RetryPolicy(
            max_retries=opts.max_retries,
            backoff_base_s=opts.backoff_base_s,
            backoff_max_s=opts.backoff_max_s,
            retry_after_max_s=opts.retry_after_max_s,
            bad_response_retries=opts.bad_response_retries,
        )
        api_key = opts.api_key.get_secret_value() if opts.api_key else None
        self.rate_limiter: RateLimiter = shared_rate_limiter(
            opts.base_url,
            api_key,
            requests_per_minute=opts.requests_per_minute,
            tokens_per_minute=opts.tokens_per_minute,
        )
        self._rng = random.Random()
        self.replicas: list[Replica] = [
            shared_replica(opts.base_url, api_key, opts.max_concurrency),
            *(
                shared_replica(r.base_url, api_key, r.max_concurrency or opts.max_concurrency)
                for r in opts.replicas
            ),
        ]
        # httpx clients and pools' wake-ups belong to one event loop; keep one set per loop.
        self._clients: list[httpx.AsyncClient] = []
        self._turn = 0
        self._pool: ReplicaPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def model_id(self) -> str:
        return self.options.model or "default"

    def capacity(self) -> int:
        """Requests worth having in flight now: the live replicas' adaptive limits."""
        return pool_capacity(self.replicas)

    def replica_health(self) -> list[dict[str, object]]:
        return [r.snapshot() for r in self.replicas]

    def _http(self) -> tuple[httpx.AsyncClient, ReplicaPool]:
        """A client for this request and the pool. Connections are spread over several clients
        of at most `_CONNECTIONS_PER_CLIENT` each: httpcore scans its whole pool for every
        request it places, which cost 20 ms of CPU per request at 64 connections (measured with
        bench/throughput.py) and capped a run far below its server's capacity."""
        loop = asyncio.get_running_loop()
        if not self._clients or self._pool is None or self._loop is not loop:
            opts = self.options
            headers = {"Accept": "application/json", **opts.headers}
            if opts.api_key is not None:
                headers["Authorization"] = f"Bearer {opts.api_key.get_secret_value()}"
            total = sum(r.max_concurrency for r in self.replicas)
            shards = max(1, -(-total // _CONNECTIONS_PER_CLIENT))
            tls = _tls_context()
            self._clients = [
                httpx.AsyncClient(
                    verify=tls,
                    headers=headers,
                    timeout=httpx.Timeout(opts.timeout_s, connect=opts.connect_timeout_s),
                    # the pool bounds requests in flight; a client never queues one itself
                    limits=httpx.Limits(max_connections=total, max_keepalive_connections=total),
                )
                for _ in range(shards)
            ]
            self._pool = ReplicaPool(self.replicas)
            self._loop = loop
        self._turn += 1
        return self._clients[self._turn % len(self._clients)], self._pool

    async def aclose(self) -> None:
        if self._clients and self._loop is asyncio.get_running_loop():
            for client in self._clients:
                await client.aclose()
        self._clients = []
        self._pool = self._loop = None

    async def check(self) -> bool:
        """True when `GET /models` of any replica answers 2xx within the connect timeout."""
        client, _ = self._http()

        async def answers(base_url: str) -> bool:
            try:
                response = await client.get(
                    f"{base_url}/models", timeout=self.options.connect_timeout_s
                )
            except httpx.HTTPError:
                return False
            return response.is_success

        return any(await asyncio.gather(*(answers(r.base_url) for r in self.replicas)))

    async def chat_template(self) -> ChatTemplate | None:
        """The configured template, else the one a llama.cpp server reports at `/props`."""
        if self.options.chat_template:
            return ChatTemplate(self.options.chat_template)
        client, _ = self._http()
        root = self.options.base_url.removesuffix("/v1")
        try:
            response = await client.get(f"{root}/props", timeout=self.options.connect_timeout_s)
            data = response.json() if response.is_success else {}
        except (httpx.HTTPError, ValueError):
            return None
        source = data.get("chat_template") if isinstance(data, dict) else None
        if not isinstance(source, str) or not source:
            return None
        bos, eos = data.get("bos_token"), data.get("eos_token")
        return ChatTemplate(
            source,
            bos_token=bos if isinstance(bos, str) else "",
            eos_token=eos if isinstance(eos, str) else "",
        )

    async def list_models(self) -> list[str]:
        """Model ids the server offers (`GET /models`), retried like generation requests."""
        reply = await self._request("GET", "/models", None, estimated_tokens=0)
        entries = reply.data.get("data")
        if not isinstance(entries, list):
            raise BadResponse(
                f"GET {self.replicas[0].base_url}/models: expected a 'data' list",
                endpoint=f"{self.options.base_url}/models",
            )
        return [str(e["id"]) for e in entries if isinstance(e, dict) and "id" in e]

    async def execute(
        self, prompts: list[NormalizedPrompt], params: SamplingParams
    ) -> list[Generation | GeneratorError]:
        async def one(prompt: NormalizedPrompt) -> Generation | GeneratorError:
            try:
                return await self._generate_prompt(prompt, params)
            except GeneratorError as exc:
                return exc

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def _generate_prompt(
        self, prompt: NormalizedPrompt, params: SamplingParams
    ) -> Generation:
        started = time.perf_counter()
        is_chat = not isinstance(prompt, str)
        path = "/chat/completions" if is_chat else "/completions"
        choices: list[Choice] = []
        prompt_tokens = completion_tokens = attempts = 0
        usage_estimated = False
        model: str | None = None
        request_id: str | None = None
        round_ = 0
        # Keep asking until there are n choices: some servers ignore `n` and return one.
        while len(choices) < params.n:
            wanted = params.n - len(choices)
            if params.seed is not None:
                seed: int | None = params.seed + round_
            else:
                # A server that ignored `n` may also sample the same way for the same prompt
                # (llama.cpp does without a seed), so follow-up rounds get a fresh seed.
                seed = None if round_ == 0 else self._rng.randrange(2**31)
            body = self._request_body(prompt, params, n=wanted, seed=seed)
            estimate = estimate_tokens(prompt_text(prompt)) + params.max_tokens * wanted
            try:
                reply = await self._request(
                    "POST", path, body, estimated_tokens=estimate, chat=is_chat
                )
            except GeneratorError as exc:
                exc.attempts += attempts
                raise
            attempts += reply.attempts
            new_choices = reply.choices
            for choice in new_choices[:wanted]:
                choices.append(choice.model_copy(update={"index": len(choices)}))
            usage = reply.data.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                prompt_tokens += int(usage.get("prompt_tokens") or 0)
                completion_tokens += int(usage["completion_tokens"])
            else:
                usage_estimated = True
                prompt_tokens += estimate_tokens(prompt_text(prompt))
                completion_tokens += sum(estimate_tokens(c.text) for c in new_choices)
            model = model or _as_str(reply.data.get("model"))
            request_id = request_id or reply.request_id
            round_ += 1
        return Generation(
            choices=choices,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=time.perf_counter() - started,
            model=model or self.model_id,
            backend=self.backend_id,
            request_id=request_id,
            attempts=attempts,
            usage_estimated=usage_estimated,
        )

    def _request_body(
        self, prompt: NormalizedPrompt, params: SamplingParams, *, n: int, seed: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = dict(self.options.extra_body)
        if self.options.model is not None:
            body["model"] = self.options.model
        if isinstance(prompt, str):
            body["prompt"] = prompt
        else:
            body["messages"] = [m.model_dump() for m in prompt]
        body.update(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            n=n,
        )
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        shape, how = params.structured, self.options.structured_output
        if shape is not None and how == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": shape.name, "schema": shape.json_schema, "strict": True},
            }
        elif shape is not None and how == "grammar":
            body["grammar"] = shape.grammar
        return body

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        estimated_tokens: int,
        chat: bool | None = None,
    ) -> _Reply:
        """Send one logical request, retrying per the policy; return the parsed JSON object
        and, when `chat` says which kind of completion it is, its validated choices."""
        client, pool = self._http()
        policy = self.retry_policy
        attempts = bad_bodies = 0
        last: Replica | None = None
        while True:
            attempts += 1
            retry_after: str | None = None
            # Queue for a replica's slot first, so waiting in the queue spends no rate budget.
            replica = await pool.acquire(avoid=last)
            last = replica
            url = f"{replica.base_url}{path}"
            endpoint = f"{method} {url}"
            outcome: Outcome = "failed"
            released = False
            failure = "cancelled"
            try:
                await self.rate_limiter.acquire(estimated_tokens)
                response = await client.request(method, url, json=body)
            except httpx.TimeoutException as exc:
                status, failure = None, f"timed out ({type(exc).__name__})"
            except (httpx.TransportError, httpx.DecodingError) as exc:
                status, failure = None, f"connection failed ({type(exc).__name__}: {exc})"
            except BaseException:
                pool.release(replica, "neutral")
                raise
            else:
                status = response.status_code
                if response.is_success:
                    try:
                        data = _parse_json_object(response, endpoint)
                        choices = [] if chat is None else _parse_choices(data, chat, endpoint)
                    except BadResponse as exc:
                        exc.attempts = attempts
                        pool.release(replica, "failed", error=exc.message)
                        if bad_bodies >= policy.bad_response_retries or (
                            attempts > policy.max_retries
                        ):
                            raise
                        bad_bodies += 1
                        failure = exc.message
                        released = True
                    else:
                        pool.release(replica, "ok")
                        used = _usage_total(data)
                        if used is not None:
                            self.rate_limiter.settle(estimated_tokens, used)
                        request_id = response.headers.get("x-request-id") or _as_str(data.get("id"))
                        return _Reply(
                            data=data, request_id=request_id, attempts=attempts, choices=choices
                        )
                else:
                    error_text = _error_text(response)
                    failure = f"HTTP {status}: {error_text}"
                    if not is_retryable_status(status):
                        pool.release(replica, "neutral")
                        self.rate_limiter.settle(estimated_tokens, 0)
                        raise RequestRejected(
                            f"{endpoint} was refused with HTTP {status}: {error_text}"
                            f"{_hint_for(status)}",
                            endpoint=url,
                            status=status,
                            attempts=attempts,
                        )
                    retry_after = response.headers.get("retry-after")
                    if status == 429:
                        outcome = "overloaded"
            if not released:
                asked = parse_retry_after(retry_after)
                pool.release(
                    replica,
                    outcome,
                    retry_after_s=None if asked is None else min(asked, policy.retry_after_max_s),
                    error=failure,
                )
            # The server did no work for a failed attempt; free its token reservation.
            self.rate_limiter.settle(estimated_tokens, 0)
            if attempts > policy.max_retries:
                many = len(self.replicas) > 1
                raise RetryBudgetExhausted(
                    f"{endpoint} failed {attempts} times; last error: {failure}. "
                    + (
                        f"No replica of the pool's {len(self.replicas)} answered; check them. "
                        if many and not any(r.live(time.monotonic()) for r in self.replicas)
                        else ""
                    )
                    + "Check that the server is up and not overloaded, or raise max_retries.",
                    endpoint=url,
                    status=status,
                    attempts=attempts,
                )
            if outcome == "overloaded" or not pool.any_live_besides(replica):
                await asyncio.sleep(retry_delay(attempts - 1, policy, retry_after, self._rng))
            # else another replica is live: retry there at once


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: building one reads the CA bundle (25 ms)."""
    return ssl.create_default_context(cafile=certifi.where())


def _parse_json_object(response: httpx.Response, endpoint: str) -> dict[str, Any]:
    try:
        data = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        snippet = response.content[:200].decode("utf-8", "replace")
        raise BadResponse(
            f"{endpoint} answered HTTP {response.status_code} with a body that is not JSON "
            f"(truncated or garbage): {snippet!r}",
            endpoint=str(response.request.url),
            status=response.status_code,
        ) from None
    if not isinstance(data, dict):
        raise BadResponse(
            f"{endpoint} answered with JSON {type(data).__name__}, expected an object",
            endpoint=str(response.request.url),
            status=response.status_code,
        )
    return data


def _parse_choices(data: dict[str, Any], is_chat: bool, endpoint: str) -> list[Choice]:
    url = endpoint.split(" ", 1)[-1]
    raw = data.get("choices")
    if not isinstance(raw, list) or not raw:
        detail = f" (error: {_short(data['error'])})" if "error" in data else ""
        raise BadResponse(f"{endpoint} answered with an empty choice list{detail}", endpoint=url)
    choices = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadResponse(f"{endpoint}: choice {i} is not an object", endpoint=url)
        if is_chat:
            message = item.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = item.get("text")
        if text is None and not (is_chat and isinstance(item.get("message"), dict)):
            field = "message.content" if is_chat else "text"
            raise BadResponse(f"{endpoint}: choice {i} has no {field}", endpoint=url)
        finish: FinishReason = "length" if item.get("finish_reason") == "length" else "stop"
        choices.append(Choice(text=str(text or ""), finish_reason=finish, index=i))
    return choices


def _usage_total(data: dict[str, Any]) -> int | None:
    usage = data.get("usage")
    if isinstance(usage, dict):
        total = usage.get("total_tokens")
        if isinstance(total, int):
            return total
    return None


def _error_text(response: httpx.Response) -> str:
    """The server's own explanation: OpenAI's error.message, FastAPI's detail, or raw text."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _short(response.text) or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return _short(error["message"])
        for key in ("error", "detail", "message"):
            if data.get(key):
                return _short(data[key])
    return _short(data)


def _hint_for(status: int) -> str:
    if status in (401, 403):
        return " (check api_key)"
    if status == 404:
        return " (check base_url, which should end in /v1, and model)"
    if status == 501:
        return " (this server does not implement the endpoint; use chat or raw prompts instead)"
    return ""


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[:_ERROR_TEXT_LIMIT] + "…"


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


register_backend("openai", OpenAIBackend)
