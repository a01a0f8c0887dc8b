"""The `openai` backend against a server that misbehaves on script: it retries what is worth
retrying, gives up within a bounded time with an error that names the endpoint, and counts every
attempt."""

from __future__ import annotations

import time
from typing import Any

import pytest

from generators import (
    BackendUnavailable,
    BadResponse,
    Generation,
    GeneratorError,
    OpenAIBackend,
    RequestRejected,
    RetryBudgetExhausted,
    SamplingParams,
)
from generators.llama_server import free_port
from testbed.scripted_llm import Reply, ScriptedServer, completion_body

pytestmark = pytest.mark.anyio

PARAMS = SamplingParams(max_tokens=8, temperature=0.7, top_p=0.5, presence_penalty=2.0)


def make_backend(url: str, **options: Any) -> OpenAIBackend:
    """A backend with test-sized backoff, so retry tests take fractions of a second."""
    defaults: dict[str, Any] = {
        "base_url": url,
        "model": "fake-model",
        "timeout_s": 2.0,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
    }
    return OpenAIBackend({**defaults, **options})


async def test_rate_limited_request_waits_for_retry_after_then_succeeds(
    fake_server: ScriptedServer,
) -> None:
    fake_server.enqueue(
        Reply(status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "1"}),
        Reply(body=completion_body("after the wait")),
    )
    backend = make_backend(fake_server.base_url)
    started = time.monotonic()
    result = await backend.generate_one("Say something", PARAMS)
    elapsed = time.monotonic() - started

    assert result.text == "after the wait"
    assert result.attempts == 2 and result.retries == 1
    assert elapsed >= 0.9, "the client must wait the second the server asked for"
    assert backend.stats.retries == 1 and backend.stats.attempts == 2
    await backend.aclose()


async def test_retry_after_longer_than_the_cap_is_cut_short(fake_server: ScriptedServer) -> None:
    fake_server.enqueue(Reply(status=503, headers={"Retry-After": "3600"}), Reply())
    backend = make_backend(fake_server.base_url, retry_after_max_s=0.1)
    started = time.monotonic()
    result = await backend.generate_one("Hi", PARAMS)
    assert result.attempts == 2
    assert time.monotonic() - started < 2.0
    await backend.aclose()


async def test_server_error_is_retried_and_the_retry_counted(fake_server: ScriptedServer) -> None:
    fake_server.enqueue(Reply(status=500, body={"error": {"message": "boom"}}), Reply())
    backend = make_backend(fake_server.base_url)
    result = await backend.generate_one("Hi", PARAMS)
    assert result.text == "ok" and result.finish_reason == "stop"
    assert result.attempts == 2
    assert len(fake_server.requests_to("/completions")) == 2
    assert backend.stats.snapshot()["retries"] == 1


async def test_hang_past_the_timeout_is_retried(fake_server: ScriptedServer) -> None:
    fake_server.enqueue(Reply(delay_s=5.0), Reply(body=completion_body("second try")))
    backend = make_backend(fake_server.base_url, timeout_s=0.3)
    started = time.monotonic()
    result = await backend.generate_one("Hi", PARAMS)
    assert result.text == "second try" and result.attempts == 2
    assert time.monotonic() - started < 2.0
    await backend.aclose()


async def test_server_that_always_hangs_fails_with_a_timeout_error(
    fake_server: ScriptedServer,
) -> None:
    fake_server.default = Reply(delay_s=5.0)
    backend = make_backend(fake_server.base_url, timeout_s=0.2, max_retries=1)
    started = time.monotonic()
    with pytest.raises(RetryBudgetExhausted) as caught:
        await backend.generate_one("Hi", PARAMS)
    assert time.monotonic() - started < 2.0
    assert "timed out" in str(caught.value)
    assert f"POST {fake_server.base_url}/completions" in str(caught.value)
    assert caught.value.attempts == 2
    await backend.aclose()


async def test_truncated_json_is_retried_once(fake_server: ScriptedServer) -> None:
    fake_server.enqueue(
        Reply(body=b'{"choices": [{"text": "cut of'), Reply(body=completion_body("whole"))
    )
    backend = make_backend(fake_server.base_url)
    result = await backend.generate_one("Hi", PARAMS)
    assert result.text == "whole" and result.attempts == 2


async def test_garbage_twice_is_a_bad_response_error(fake_server: ScriptedServer) -> None:
    fake_server.default = Reply(body=b"<html>502 Bad Gateway</html>")
    backend = make_backend(fake_server.base_url, max_retries=5)
    with pytest.raises(BadResponse) as caught:
        await backend.generate_one("Hi", PARAMS)
    # One retry for an unusable body, not the whole retry budget.
    assert len(fake_server.requests_to("/completions")) == 2
    assert caught.value.attempts == 2
    assert "not JSON" in str(caught.value) and "502 Bad Gateway" in str(caught.value)
    assert backend.stats.failed_calls == 1 and backend.stats.attempts == 2


async def test_empty_choice_list_is_retried_then_reported(fake_server: ScriptedServer) -> None:
    empty: dict[str, Any] = {"id": "x", "model": "fake-model", "choices": [], "usage": None}
    fake_server.enqueue(Reply(body=empty), Reply())
    backend = make_backend(fake_server.base_url)
    assert (await backend.generate_one("Hi", PARAMS)).attempts == 2

    fake_server.default = Reply(body=empty)
    with pytest.raises(BadResponse, match="empty choice list"):
        await backend.generate_one("Hi", PARAMS)


async def test_persistent_server_error_names_endpoint_and_status(
    fake_server: ScriptedServer,
) -> None:
    fake_server.default = Reply(status=500, body={"error": {"message": "model crashed"}})
    backend = make_backend(fake_server.base_url, max_retries=3)
    started = time.monotonic()
    with pytest.raises(RetryBudgetExhausted) as caught:
        await backend.generate_one([{"role": "user", "content": "Hi"}], PARAMS)
    error = caught.value
    assert time.monotonic() - started < 2.0
    assert f"POST {fake_server.base_url}/chat/completions" in str(error)
    assert "HTTP 500: model crashed" in str(error)
    assert error.status == 500 and error.attempts == 4
    assert isinstance(error, BackendUnavailable)
    assert len(fake_server.requests_to("/chat/completions")) == 4
    assert backend.stats.failed_calls == 1 and backend.stats.retries == 3


async def test_client_error_is_not_retried_and_quotes_the_server(
    fake_server: ScriptedServer,
) -> None:
    fake_server.default = Reply(
        status=400, body={"error": {"message": "unknown parameter 'top_q'"}}
    )
    backend = make_backend(fake_server.base_url)
    with pytest.raises(RequestRejected) as caught:
        await backend.generate_one("Hi", PARAMS)
    assert "unknown parameter 'top_q'" in str(caught.value)
    assert caught.value.status == 400 and caught.value.attempts == 1
    assert len(fake_server.requests_to("/completions")) == 1


async def test_wrong_key_says_to_check_the_key(fake_server: ScriptedServer) -> None:
    fake_server.default = Reply(status=401, body={"error": {"message": "Incorrect API key"}})
    backend = make_backend(fake_server.base_url, api_key="wrong")
    with pytest.raises(RequestRejected, match=r"HTTP 401: Incorrect API key \(check api_key\)"):
        await backend.generate_one("Hi", PARAMS)
    assert fake_server.received[-1].headers["Authorization"] == "Bearer wrong"


async def test_nobody_listening_is_backend_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = make_backend(url, max_retries=1)
    assert await backend.check() is False
    with pytest.raises(BackendUnavailable, match="connection failed"):
        await backend.generate_one("Hi", PARAMS)
    await backend.aclose()


async def test_request_carries_sampling_parameters_and_extras(fake_server: ScriptedServer) -> None:
    backend = make_backend(
        fake_server.base_url, extra_body={"top_k": 40}, headers={"X-Trace": "t1"}
    )
    params = PARAMS.model_copy(update={"stop": ("\n\n", "16."), "seed": 7})
    await backend.generate_one("1. Write a haiku\n2.", params)
    sent = fake_server.received[-1]
    assert sent.body == {
        "top_k": 40,
        "model": "fake-model",
        "prompt": "1. Write a haiku\n2.",
        "max_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.5,
        "presence_penalty": 2.0,
        "frequency_penalty": 0.0,
        "n": 1,
        "stop": ["\n\n", "16."],
        "seed": 7,
    }
    assert sent.headers["X-Trace"] == "t1"


async def test_server_that_ignores_n_is_asked_again(fake_server: ScriptedServer) -> None:
    backend = make_backend(fake_server.base_url)
    result = await backend.generate_one("Hi", PARAMS.model_copy(update={"n": 3}))
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert len(fake_server.requests_to("/completions")) == 3
    assert result.completion_tokens == 6 and result.prompt_tokens == 15
    seeds = [r.body["seed"] for r in fake_server.received if r.body and "seed" in r.body]
    assert len(set(seeds)) == 2, "follow-up requests need fresh seeds to differ"


async def test_result_reports_model_request_id_and_length_finish(
    fake_server: ScriptedServer,
) -> None:
    fake_server.default = Reply(
        body=completion_body("cut", finish_reason="length"), headers={"x-request-id": "req-42"}
    )
    backend = make_backend(fake_server.base_url, model="alias")
    result = await backend.generate_one("Hi", PARAMS)
    assert result.finish_reason == "length"
    assert result.model == "fake-model" and result.request_id == "req-42"
    assert result.prompt_tokens == 5 and result.completion_tokens == 2
    assert result.latency_s > 0 and not result.usage_estimated


async def test_missing_usage_is_estimated_and_flagged(fake_server: ScriptedServer) -> None:
    body = completion_body("four words right here")
    del body["usage"]
    fake_server.default = Reply(body=body)
    result = await make_backend(fake_server.base_url).generate_one("Hi there", PARAMS)
    assert result.usage_estimated and result.completion_tokens > 0 and result.prompt_tokens > 0


async def test_batch_keeps_good_results_when_one_prompt_fails(fake_server: ScriptedServer) -> None:
    fake_server.by_prompt["bad"] = Reply(status=422, body={"detail": "prompt rejected"})
    backend = make_backend(fake_server.base_url)
    results = await backend.generate(["good 1", "bad", "good 2"], PARAMS, return_exceptions=True)
    assert isinstance(results[0], Generation) and isinstance(results[2], Generation)
    assert isinstance(results[1], RequestRejected) and "prompt rejected" in str(results[1])
    assert backend.stats.calls == 2 and backend.stats.failed_calls == 1
    with pytest.raises(RequestRejected):
        await backend.generate(["good", "bad"], PARAMS)


async def test_probe_and_model_list(fake_server: ScriptedServer) -> None:
    backend = make_backend(fake_server.base_url)
    assert await backend.check() is True
    assert await backend.list_models() == ["fake-model"]


async def test_concurrency_limit_bounds_requests_in_flight(fake_server: ScriptedServer) -> None:
    fake_server.default = Reply(delay_s=0.2)
    backend = make_backend(fake_server.base_url, max_concurrency=2)
    started = time.monotonic()
    results = await backend.generate([f"p{i}" for i in range(4)], PARAMS)
    elapsed = time.monotonic() - started
    assert len(results) == 4
    # Four 0.2 s requests two at a time take two rounds, not one.
    assert 0.38 <= elapsed < 1.5


def test_generator_errors_share_one_base_class() -> None:
    for error in (BadResponse, RequestRejected, RetryBudgetExhausted, BackendUnavailable):
        assert issubclass(error, GeneratorError)
