"""Client-side rate limits: one budget per endpoint and key, however many backends use it."""

from __future__ import annotations

import asyncio
import time

import pytest

from generators import OpenAIBackend, RateLimiter, SamplingParams, shared_rate_limiter
from testbed.scripted_llm import ScriptedServer

PARAMS = SamplingParams(max_tokens=4)


@pytest.mark.anyio
async def test_two_backends_on_one_endpoint_share_the_request_budget(
    fake_server: ScriptedServer,
) -> None:
    url = fake_server.base_url
    first = OpenAIBackend(base_url=url, api_key="key-1", requests_per_minute=4)
    second = OpenAIBackend(base_url=url, api_key="key-1", requests_per_minute=4)
    other_key = OpenAIBackend(base_url=url, api_key="key-2", requests_per_minute=4)
    assert first.rate_limiter is second.rate_limiter
    assert other_key.rate_limiter is not first.rate_limiter

    await first.generate(["a", "b"], PARAMS)
    await second.generate(["c", "d"], PARAMS)
    # Four requests spent the shared minute's budget: the fifth, from either backend, must wait
    # (about 15 s at 4 per minute), so it is not sent within half a second.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(second.generate(["e"], PARAMS), timeout=0.5)
    # Another key has its own budget.
    await asyncio.wait_for(other_key.generate(["f"], PARAMS), timeout=2.0)

    sent = [r.body["prompt"] for r in fake_server.requests_to("/completions") if r.body]
    assert sorted(sent) == ["a", "b", "c", "d", "f"]


@pytest.mark.anyio
async def test_requests_are_paced_at_the_configured_rate(fake_server: ScriptedServer) -> None:
    backend = OpenAIBackend(base_url=fake_server.base_url, requests_per_minute=1200)
    limiter = backend.rate_limiter
    for _ in range(1200):  # spend the minute's burst: from now on one request per 50 ms
        limiter.reserve(0)
    started = time.monotonic()
    await backend.generate([f"p{i}" for i in range(4)], PARAMS)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 1.0, f"4 requests at 20/s took {elapsed:.2f}s"


def test_token_budget_is_corrected_by_real_usage() -> None:
    limiter = RateLimiter(tokens_per_minute=600)  # refills 10 tokens per second
    assert limiter.reserve(600) == 0.0
    # The bucket is empty: 100 more tokens would take about 10 s.
    assert limiter.reserve(100) == pytest.approx(10.0, abs=0.1)
    limiter.cancel(100)
    # The first call really used 100 tokens, not 600: the 500 come back at once.
    limiter.settle(estimated=600, actual=100)
    assert limiter.reserve(400) == 0.0


def test_stricter_limit_wins_when_backends_disagree() -> None:
    a = shared_rate_limiter("http://h/v1", "k", requests_per_minute=100)
    b = shared_rate_limiter("http://h/v1/", "k", requests_per_minute=10, tokens_per_minute=5000)
    assert a is b
    assert a.requests is not None and a.requests.capacity == 10
    assert a.tokens is not None and a.tokens.capacity == 5000
