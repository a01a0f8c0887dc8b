"""A scripted model that also judges: ratings by what the answer says, and a pairwise judge
that by default always prefers whichever answer is shown first (the position bias both orders
cancel). Tests may script what each model answers, a judge that knows which answer is better,
and requests that fail."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from generators.prompt_text import JUDGE_WORDS, PAIRWISE_WORDS
from testbed.scripted_llm import Reply, StubLLM, chat_body, completion_body
from tests.conftest import _wipe

MODEL_A = "stub-model"
MODEL_B = "stub-model-b"
JUDGE = "stub-judge"
RATING_HEADER = JUDGE_WORDS["en"]["header"][:60]
PAIRWISE_HEADER = PAIRWISE_WORDS["en"]["header"][:60]


class JudgingStub(StubLLM):
    """Answers like StubLLM; as a judge, rates A and compares with a fixed position bias.

    `answer_for(model, task)` scripts a model's answer to a task (its user message): a text, or
    a Reply (a failure). `fail_judge(prompt)` fails the judge's requests it is true for.
    `prefers`: a judge that knows better: it rates an answer holding this text A (others C)
    and, comparing, picks the answer holding it, whatever its position.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rating_answer = '{"rating": "A", "rationale": "Clear and correct."}'
        self.pairwise_answer = '{"winner": "1", "rationale": "The first one."}'
        self.answer_for: Callable[[str, str], str | Reply] | None = None
        self.fail_judge: Callable[[str], bool] | None = None
        self.prefers: str | None = None

    def _next_reply(self, body: dict[str, Any] | None) -> Reply:
        prompt = str((body or {}).get("prompt", ""))
        with self._lock:
            if self.script:
                return self.script.popleft()
        judging = prompt.startswith((RATING_HEADER, PAIRWISE_HEADER))
        if judging and self.fail_judge is not None and self.fail_judge(prompt):
            return refused()
        if prompt.startswith(RATING_HEADER):
            return Reply(body=completion_body(self.rating(prompt)), delay_s=self.delay_s)
        if prompt.startswith(PAIRWISE_HEADER):
            return Reply(body=completion_body(self.preference(prompt)), delay_s=self.delay_s)
        if body and "messages" in body:  # an answer to a task, asked as a chat
            if self.answer_for is not None:
                task = str(body["messages"][-1]["content"])
                scripted = self.answer_for(str(body.get("model")), task)
                if isinstance(scripted, Reply):
                    return scripted
                return Reply(body=chat_body(scripted), delay_s=self.delay_s)
            with self.rng_lock:
                text = "Sure. " + self.sentence(False)
            return Reply(body=chat_body(text), delay_s=self.delay_s)
        return super()._next_reply(body)

    def rating(self, prompt: str) -> str:
        """The rating answer: the fixed one, or A for an answer holding `prefers`, else C."""
        if self.prefers is None:
            return self.rating_answer
        rated = prompt.rsplit(f"{JUDGE_WORDS['en']['task']} ", 1)[-1]
        level = "A" if self.prefers in rated else "C"
        return json.dumps({"rating": level, "rationale": "Judged by what it says."})

    def preference(self, prompt: str) -> str:
        """The pairwise answer: the fixed one, or the position of the preferred answer."""
        if self.prefers is None:
            return self.pairwise_answer
        words = PAIRWISE_WORDS["en"]
        shown = prompt.rsplit(f"{words['task']} ", 1)[-1]  # the last task: the one asked about
        first = shown.split(words["first"], 1)[1].split(words["second"], 1)[0]
        second = shown.split(words["second"], 1)[1]
        winner = "1" if self.prefers in first else "2" if self.prefers in second else "tie"
        return json.dumps({"winner": winner, "rationale": "One answer is right."})


def refused(message: str = "the prompt is too long for this model") -> Reply:
    """A request the server refuses (HTTP 400): fails at once, with no retry."""
    return Reply(status=400, body={"error": {"message": message, "type": "invalid_request"}})


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
