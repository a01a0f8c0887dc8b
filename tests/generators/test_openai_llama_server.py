"""The `openai` backend against a real OpenAI-compatible server: llama-cpp-python's server
serving the bundled GGUF on loopback (the session's `llama_server`)."""

from __future__ import annotations

import pytest

from generators import LocalBackend, OpenAIBackend, SamplingParams
from tests.conftest import LLAMA_ALIAS

pytestmark = [pytest.mark.anyio, pytest.mark.real]

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
# llama.cpp's server defaults to repeat_penalty 1.1; the local backend and OpenAI use none.
SAME_AS_LOCAL = {"repeat_penalty": 1.0, "top_k": 40, "min_p": 0.05}


async def test_completions_return_text_tokens_and_finish_reason(llama_server: str) -> None:
    backend = OpenAIBackend(base_url=llama_server, model=LLAMA_ALIAS, timeout_s=60)
    prompts = ["Here is a list of fruits:\n1. Apple\n2. Banana\n3.", "Once upon a time"]
    results = await backend.generate(prompts, GREEDY)
    for result in results:
        assert result.text.strip()
        assert result.finish_reason == "length" and result.completion_tokens == 8
        assert result.prompt_tokens > 3
        assert result.model == LLAMA_ALIAS
        assert result.request_id and result.attempts == 1
    assert backend.stats.calls == 2 and backend.stats.completion_tokens == 16
    await backend.aclose()


async def test_chat_completions_and_stop_reason(llama_server: str) -> None:
    backend = OpenAIBackend(base_url=llama_server, timeout_s=60)
    result = await backend.generate_one(
        [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        SamplingParams(max_tokens=32, temperature=0),
    )
    assert "Paris" in result.text
    assert result.finish_reason == "stop" and 0 < result.completion_tokens < 32
    assert result.prompt_tokens > 10
    await backend.aclose()


async def test_probe_and_model_list(llama_server: str) -> None:
    backend = OpenAIBackend(base_url=llama_server)
    assert await backend.check() is True
    assert LLAMA_ALIAS in await backend.list_models()
    await backend.aclose()


async def test_server_and_embedded_model_agree_when_greedy(llama_server: str) -> None:
    """The same file with the same sampler gives the same text in-process and over HTTP."""
    prompt = "Write three tips for staying focused:\n1."
    params = SamplingParams(max_tokens=24, temperature=0.0, stop=["\n\n"])
    server = OpenAIBackend(base_url=llama_server, extra_body=SAME_AS_LOCAL)
    over_http = await server.generate_one(prompt, params)
    in_process = await LocalBackend().generate_one(prompt, params)
    assert over_http.text == in_process.text
    assert over_http.prompt_tokens == in_process.prompt_tokens
    assert over_http.completion_tokens == in_process.completion_tokens
    await server.aclose()
