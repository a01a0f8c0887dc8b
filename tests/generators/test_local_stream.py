"""The `local` backend's stream with an engine that cannot stream (the transformers engine of a
fine-tuned model): each choice goes out whole as soon as it is made, and an engine crash
midway ends the stream with a `GeneratorError` after the choices already sent."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest

from generators import GeneratorError, LocalBackend, SamplingParams
from generators.base import ChatMessage, Generation
from generators.chat_template import ChatTemplate
from generators.engine import Sample
from generators.streaming import ChoiceDelta, stream

pytestmark = pytest.mark.anyio


class WholeAnswers:
    """An engine that answers each choice whole, and can crash on a given choice."""

    def __init__(self, crash_on: int | None = None) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.crash_on = crash_on

    def complete(
        self, prompt: str, params: SamplingParams, seed: int, extra: Mapping[str, Any]
    ) -> Sample:
        raise AssertionError("chat only")

    def chat(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        seed: int,
        extra: Mapping[str, Any],
    ) -> Sample:
        if self.calls == self.crash_on:
            raise RuntimeError("CUDA out of memory")
        self.calls += 1
        return Sample(f"answer {self.calls}", "stop", prompt_tokens=5, completion_tokens=2)

    def chat_template(self) -> ChatTemplate | None:
        return None


def backend_with(engine: WholeAnswers, monkeypatch: pytest.MonkeyPatch) -> LocalBackend:
    backend = LocalBackend(model_id="tuned")

    async def load() -> WholeAnswers:
        return engine

    monkeypatch.setattr(backend, "load", load)
    return backend


async def test_each_choice_goes_out_whole_once_made(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = backend_with(WholeAnswers(), monkeypatch)
    items = [i async for i in stream(backend, [{"role": "user", "content": "hi"}], {"n": 2})]
    assert items[:2] == [ChoiceDelta(0, "answer 1", "stop"), ChoiceDelta(1, "answer 2", "stop")]
    (generation,) = items[2:]
    assert isinstance(generation, Generation)
    assert [c.text for c in generation.choices] == ["answer 1", "answer 2"]
    assert (generation.prompt_tokens, generation.completion_tokens) == (5, 4)
    assert backend.stats.calls == 1 and backend.stats.completion_tokens == 4
    assert backend.pending == 0


async def test_an_engine_crash_midway_ends_the_stream_with_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = backend_with(WholeAnswers(crash_on=1), monkeypatch)
    sent: list[object] = []
    with pytest.raises(GeneratorError, match="CUDA out of memory"):
        async for item in stream(backend, [{"role": "user", "content": "hi"}], {"n": 3}):
            sent.append(item)
    assert sent == [ChoiceDelta(0, "answer 1", "stop")]
    assert backend.stats.failed_calls == 1 and backend.pending == 0
