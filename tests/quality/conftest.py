"""A scripted model that also judges: ratings by what the answer says, and a pairwise judge
that always prefers whichever answer is shown first (the position bias both orders cancel)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from generators.prompt_text import JUDGE_WORDS, PAIRWISE_WORDS
from tests.conftest import _wipe
from tests.generators.fakes import Reply, completion_body
from tests.runs.stub_llm import StubLLM

MODEL_A = "stub-model"
MODEL_B = "stub-model-b"
JUDGE = "stub-judge"
RATING_HEADER = JUDGE_WORDS["en"]["header"][:60]
PAIRWISE_HEADER = PAIRWISE_WORDS["en"]["header"][:60]


class JudgingStub(StubLLM):
    """Answers like StubLLM; as a judge, rates A and compares with a fixed position bias."""

    def __init__(self) -> None:
        super().__init__()
        self.rating_answer = '{"rating": "A", "rationale": "Clear and correct."}'
        self.pairwise_answer = '{"winner": "1", "rationale": "The first one."}'

    def _next_reply(self, body: dict[str, Any] | None) -> Reply:
        prompt = str((body or {}).get("prompt", ""))
        with self._lock:
            if self.script:
                return self.script.popleft()
        if prompt.startswith(RATING_HEADER):
            return Reply(body=completion_body(self.rating_answer), delay_s=self.delay_s)
        if prompt.startswith(PAIRWISE_HEADER):
            return Reply(body=completion_body(self.pairwise_answer), delay_s=self.delay_s)
        if body and "messages" in body:  # an answer to a task, asked as a chat
            with self.rng_lock:
                text = "Sure. " + self.sentence(False)
            return Reply(body=chat_body(text), delay_s=self.delay_s)
        return super()._next_reply(body)


def chat_body(text: str) -> dict[str, Any]:
    """A well-formed `/v1/chat/completions` answer."""
    return {
        "id": "chat-test",
        "object": "chat.completion",
        "model": "fake-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


@pytest.fixture
def judging_stub() -> Iterator[JudgingStub]:
    server = JudgingStub()
    server.start()
    yield server
    server.stop()


def quality_settings(
    settings_factory: Callable[..., Settings], stub: StubLLM, **overrides: Any
) -> Settings:
    endpoint = {
        "name": "stub",
        "base_url": stub.base_url,
        "models": [MODEL_A, MODEL_B, JUDGE],
        "max_retries": 1,
        "timeout_s": 5,
    }
    # No training process: these tests read the files fine-tune jobs freeze, never train.
    quiet = {"finetune_workers": 0} if "finetune_workers" in Settings.model_fields else {}
    return settings_factory(
        endpoints=[endpoint],
        worker_poll_seconds=0.05,
        worker_lease_seconds=3,
        **{**quiet, **overrides},
    )


@pytest.fixture
def api(
    settings_factory: Callable[..., Settings], judging_stub: JudgingStub
) -> Iterator[TestClient]:
    settings = quality_settings(settings_factory, judging_stub)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


def seed(task_id: str, instruction: str, output: str = "An answer.", input: str = "") -> dict:
    return {
        "id": task_id,
        "instruction": instruction,
        "instances": [{"input": input, "output": output}],
        "is_classification": False,
    }
