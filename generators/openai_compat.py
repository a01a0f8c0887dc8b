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

Streaming (`stream_prompt`): the server's own event stream (`stream: true`) passed on delta by
delta, holding its replica slot until the stream ends. Failures are retried as above until the
stream begins, not after; a server that ignores `stream` has its whole answer passed on, and one
that ignores `n` gets follow-up streams, their choices numbered after the first's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import ssl
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
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
from generators.http1 import Answer, Http1Client, direct
from generators.pool import Outcome, Replica, ReplicaPool, shared_replica
from generators.pool import capacity as pool_capacity
from generators.ratelimit import RateLimiter, shared_rate_limiter
from generators.retry import RetryPolicy, is_retryable_status, parse_retry_after, retry_delay
from generators.streaming import ChoiceDelta, StreamItem

_ERROR_TEXT_LIMIT = 500
_CONNECTIONS_PER_CLIENT = 8


@dataclass
class _Reply:
    """A parsed 2xx answer and what it cost to get it; or, asked to stream, the event stream
    still open, with the replica slot it holds (the reader releases both)."""

    data: dict[str, Any]
    request_id: str | None
    attempts: int
    choices: list[Choice]
    events: httpx.Response | None = None
    replica: Replica | None = None
    pool: ReplicaPool | None = None


@dataclass
class _Rounds:
    """What the rounds of one prompt add up to: some servers ignore `n`, so a prompt may take
    several requests, each adding choices, tokens and attempts."""

    started: float = field(default_factory=time.perf_counter)
    choices: list[Choice] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    usage_estimated: bool = False
    model: str | None = None
    request_id: str | None = None
    count: int = 0

    def add(
        self,
        prompt: NormalizedPrompt,
        kept: list[Choice],
        usage: object,
        model: str | None,
        request_id: str | None,
        generated: list[Choice] | None = None,
    ) -> None:
        """One round's choices (renumbered after those before) and its usage, or an estimate
        of it from the texts when the server reports none."""
        for choice in kept:
            self.choices.append(choice.model_copy(update={"index": len(self.choices)}))
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage["completion_tokens"])
        else:
            self.usage_estimated = True
            self.prompt_tokens += estimate_tokens(prompt_text(prompt))
            counted = kept if generated is None else generated
            self.completion_tokens += sum(estimate_tokens(c.text) for c in counted)
        self.model = self.model or model
        self.request_id = self.request_id or request_id
        self.count += 1

    def generation(self, model_id: str, backend_id: str) -> Generation:
        return Generation(
            choices=self.choices,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_s=time.perf_counter() - self.started,
            model=self.model or model_id,
            backend=backend_id,
            request_id=self.request_id,
            attempts=self.attempts,
            usage_estimated=self.usage_estimated,
        )


@dataclass
class _Round:
    """What one streamed request brought: each choice's text and finish, keyed by the server's
    index in the order the choices began (their rank), and the usage if the server sent one."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    finishes: dict[int, FinishReason] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    model: str | None = None
    request_id: str | None = None

    def delta(self, index: int, text: str, finish: str | None) -> ChoiceDelta:
        """Record a piece of choice `index`; the same piece, numbered by the choice's rank."""
        texts = self.texts.setdefault(index, [])
        if text:
            texts.append(text)
        reason: FinishReason | None = None
        if finish is not None and index not in self.finishes:
            reason = self.finishes[index] = "length" if finish == "length" else "stop"
        return ChoiceDelta(list(self.texts).index(index), text, reason)

    def take_whole(self, reply: _Reply) -> None:
        self.usage = reply.data.get("usage") if isinstance(reply.data.get("usage"), dict) else None
        self.model = _as_str(reply.data.get("model"))
        self.request_id = reply.request_id


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
            description="The served model's Jinja chat template, for raw-template prompts; None "
            "asks the server (llama.cpp's GET /props).",
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
        self._lean: Http1Client | None = None  # whole JSON answers, when no proxy applies
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
            if all(direct(r.base_url) for r in self.replicas):
                self._lean = Http1Client(
                    headers=headers,
                    timeout_s=opts.timeout_s,
                    connect_timeout_s=opts.connect_timeout_s,
                    tls=tls,
                )
            self._pool = ReplicaPool(self.replicas)
            self._loop = loop
        self._turn += 1
        return self._clients[self._turn % len(self._clients)], self._pool

    async def aclose(self) -> None:
        if self._clients and self._loop is asyncio.get_running_loop():
            for client in self._clients:
                await client.aclose()
            if self._lean is not None:
                await self._lean.aclose()
        self._clients = []
        self._lean = None
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

        if len(prompts) == 1:  # a run's usual call: no task to create for it
            return [await one(prompts[0])]
        return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def _generate_prompt(
        self, prompt: NormalizedPrompt, params: SamplingParams
    ) -> Generation:
        is_chat = not isinstance(prompt, str)
        path = "/chat/completions" if is_chat else "/completions"
        rounds = _Rounds()
        # Keep asking until there are n choices: some servers ignore `n` and return one.
        while len(rounds.choices) < params.n:
            wanted = params.n - len(rounds.choices)
            body = self._request_body(
                prompt, params, n=wanted, seed=self._round_seed(params, rounds.count)
            )
            estimate = estimate_tokens(prompt_text(prompt)) + params.max_tokens * wanted
            try:
                reply = await self._request(
                    "POST", path, body, estimated_tokens=estimate, chat=is_chat
                )
            except GeneratorError as exc:
                exc.attempts += rounds.attempts
                raise
            rounds.attempts += reply.attempts
            rounds.add(
                prompt,
                reply.choices[:wanted],
                reply.data.get("usage"),
                _as_str(reply.data.get("model")),
                reply.request_id,
                generated=reply.choices,
            )
        return rounds.generation(self.model_id, self.backend_id)

    async def stream_prompt(
        self, prompt: NormalizedPrompt, params: SamplingParams
    ) -> AsyncGenerator[StreamItem, None]:
        """Each choice's text as the server streams it, then the whole `Generation`; see
        `generators.streaming.stream`."""
        is_chat = not isinstance(prompt, str)
        path = "/chat/completions" if is_chat else "/completions"
        rounds = _Rounds()
        while len(rounds.choices) < params.n:  # as in `_generate_prompt`: servers ignore `n`
            done = len(rounds.choices)
            wanted = params.n - done
            seed = self._round_seed(params, rounds.count)
            body = {**self._request_body(prompt, params, n=wanted, seed=seed), "stream": True}
            estimate = estimate_tokens(prompt_text(prompt)) + params.max_tokens * wanted
            got = _Round()
            try:
                reply = await self._request(
                    "POST", path, body, estimated_tokens=estimate, chat=is_chat, stream=True
                )
                rounds.attempts += reply.attempts
                if reply.events is None:  # the server ignored `stream` and answered whole
                    got.take_whole(reply)
                    for choice in reply.choices[:wanted]:
                        delta = got.delta(choice.index, choice.text, choice.finish_reason)
                        yield replace(delta, index=done + delta.index)
                else:
                    # Closed here, not left to the garbage collector, when our reader stops.
                    reading = self._read_events(reply, got, is_chat, wanted, estimate)
                    async with aclosing(reading) as deltas:
                        async for delta in deltas:
                            yield replace(delta, index=done + delta.index)
                if not got.texts:
                    raise BadResponse(
                        f"POST {self.options.base_url}{path} streamed no choice",
                        endpoint=f"{self.options.base_url}{path}",
                    )
            except GeneratorError as exc:
                exc.attempts += rounds.attempts
                raise
            for rank, index in enumerate(got.texts):  # a choice the server never finished
                if index not in got.finishes:
                    got.finishes[index] = "stop"
                    yield ChoiceDelta(done + rank, "", "stop")
            new = [
                Choice(text="".join(texts), finish_reason=got.finishes[i])
                for i, texts in got.texts.items()
            ]
            rounds.add(prompt, new, got.usage, got.model, got.request_id)
        yield rounds.generation(self.model_id, self.backend_id)

    async def _read_events(
        self, reply: _Reply, got: _Round, is_chat: bool, wanted: int, estimate: int
    ) -> AsyncGenerator[ChoiceDelta, None]:
        """Read one open event stream into `got`, yielding each choice's text and finish with
        the choice's rank in this stream; then give back its replica slot and connection."""
        assert reply.events is not None and reply.replica and reply.pool
        response, replica, pool = reply.events, reply.replica, reply.pool
        got.request_id = reply.request_id
        endpoint = f"POST {response.request.url}"
        outcome: Outcome = "neutral"  # a reader that stops early is no fault of the server
        error: str | None = None
        try:
            async for data in _event_data(response):
                if data == "[DONE]":
                    break
                chunk = _parse_event(data, endpoint)
                got.model = got.model or _as_str(chunk.get("model"))
                got.request_id = got.request_id or _as_str(chunk.get("id"))
                if isinstance(chunk.get("usage"), dict):
                    got.usage = chunk["usage"]
                for item in chunk.get("choices") or []:
                    index = item.get("index", 0) if isinstance(item, dict) else None
                    if not isinstance(index, int) or not 0 <= index < wanted:
                        continue  # a choice not asked for
                    finish = item.get("finish_reason")
                    delta = got.delta(index, _delta_text(item, is_chat), finish)
                    if delta.text or delta.finish_reason:
                        yield delta
            outcome = "ok"
        except BadResponse as exc:
            outcome, error = "failed", exc.message
            raise
        except (httpx.TransportError, httpx.DecodingError) as exc:
            outcome, error = "failed", f"the stream broke off ({type(exc).__name__}: {exc})"
            raise BadResponse(f"{endpoint}: {error}", endpoint=str(response.request.url)) from exc
        finally:
            # The slot first: closing may be cut short when the reader was cancelled.
            pool.release(replica, outcome, error=error)
            used = _usage_total({"usage": got.usage})
            if used is not None:
                self.rate_limiter.settle(estimate, used)
            await response.aclose()

    def _round_seed(self, params: SamplingParams, round_: int) -> int | None:
        if params.seed is not None:
            return params.seed + round_
        # A server that ignored `n` may also sample the same way for the same prompt (llama.cpp
        # does without a seed), so follow-up rounds get a fresh seed.
        return None if round_ == 0 else self._rng.randrange(2**31)

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
        stream: bool = False,
    ) -> _Reply:
        """Send one logical request, retrying per the policy; return the parsed JSON object
        and, when `chat` says which kind of completion it is, its validated choices. With
        `stream`, a 2xx event stream comes back open instead (see `_Reply`)."""
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
                response = await _send(client, method, url, body, stream=stream, lean=self._lean)
            except httpx.TimeoutException as exc:
                status, failure = None, f"timed out ({type(exc).__name__})"
            except (httpx.TransportError, httpx.DecodingError) as exc:
                status, failure = None, f"connection failed ({type(exc).__name__}: {exc})"
            except BaseException:
                pool.release(replica, "neutral")
                raise
            else:
                status = response.status_code
                if stream and response.is_success and not response.is_stream_consumed:
                    assert isinstance(response, httpx.Response)  # streams stay on httpx
                    # An event stream `_send` left open: its reader releases the slot.
                    return _Reply(
                        data={},
                        request_id=response.headers.get("x-request-id"),
                        attempts=attempts,
                        choices=[],
                        events=response,
                        replica=replica,
                        pool=pool,
                    )
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


async def _send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    body: dict[str, Any] | None,
    *,
    stream: bool,
    lean: Http1Client | None = None,
) -> httpx.Response | Answer:
    """One attempt. With `stream`, a 2xx event stream comes back unread (its reader closes it);
    any other answer, an error or a server that ignored `stream`, is read whole. Answers read
    whole go through the lean client when there is one (generators/http1.py: a quarter of the
    service's CPU went into httpx here)."""
    if not stream:
        if lean is not None:
            return await lean.request(method, url, body)
        return await client.request(method, url, json=body)
    response = await client.send(client.build_request(method, url, json=body), stream=True)
    content_type = response.headers.get("content-type", "")
    if response.is_success and content_type.startswith("text/event-stream"):
        return response
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


async def _event_data(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The `data` of each server-sent event (one line each, as OpenAI-style servers send)."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


def _parse_event(data: str, endpoint: str) -> dict[str, Any]:
    url = endpoint.split(" ", 1)[-1]
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise BadResponse(
            f"{endpoint} streamed an event that is not JSON: {data[:200]!r}", endpoint=url
        ) from None
    if not isinstance(chunk, dict):
        raise BadResponse(f"{endpoint} streamed JSON {type(chunk).__name__}", endpoint=url)
    if chunk.get("error"):
        raise BadResponse(f"{endpoint} failed midway: {_short(chunk['error'])}", endpoint=url)
    return chunk


def _delta_text(item: dict[str, Any], is_chat: bool) -> str:
    if not is_chat:
        return str(item.get("text") or "")
    delta = item.get("delta")
    return str(delta.get("content") or "") if isinstance(delta, dict) else ""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: building one reads the CA bundle (25 ms)."""
    return ssl.create_default_context(cafile=certifi.where())


def _parse_json_object(response: httpx.Response | Answer, endpoint: str) -> dict[str, Any]:
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


def _error_text(response: httpx.Response | Answer) -> str:
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
