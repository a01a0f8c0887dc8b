"""A scripted judge: the runs' stub model, answering judge prompts with a rating chosen from the
judged task's instruction, so every level and unparseable answers occur deterministically."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from generators.prompt_text import JUDGE_WORDS
from testbed.scripted_llm import StubLLM
from tests.conftest import _wipe
from tests.runs.conftest import STUB_MODEL

JUDGE_MODEL = "judge-model"
UNPARSEABLE = "I think this task is quite fine overall."
_INSTRUCTION = re.compile(r"^(?:Instruction: |指令：)(.*)$", re.M)
_ENDS = tuple(w["answer"] for w in JUDGE_WORDS.values())


def scripted_rating(instruction: str) -> str | None:
    """A, B, C, D or None (unparseable), spread evenly by a hash of the instruction."""
    return ("A", "B", "C", "D", None)[zlib.crc32(instruction.encode()) % 5]


def judge_answer(rating: str | None) -> str:
    if rating is None:
        return UNPARSEABLE
    return f' {{"rating": "{rating}", "rationale": "scripted {rating} rationale."}}'


class JudgeStub(StubLLM):
    """Generates like StubLLM; judge prompts get `judge_answer(scripted_rating(instruction))`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.judged: list[str] = []  # instructions judged, in order

    def answer(self, prompt: str) -> str:
        if prompt.rstrip().endswith(_ENDS):
            instruction = _INSTRUCTION.findall(prompt)[-1].strip()
            with self._lock:
                self.judged.append(instruction)
            return judge_answer(scripted_rating(instruction))
        return super().answer(prompt)


@pytest.fixture
def judge_stub() -> Iterator[JudgeStub]:
    server = JudgeStub()
    server.start()
    yield server
    server.stop()


def judge_endpoints(stub: StubLLM, judge_concurrency: int | None = None) -> list[dict[str, Any]]:
    """The stub serves both the generating model and the judge (two endpoints)."""
    return [
        {"name": "stub", "base_url": stub.base_url, "models": [STUB_MODEL], "max_retries": 1},
        {
            "name": "judge",
            "base_url": stub.base_url,
            "models": [JUDGE_MODEL],
            "max_retries": 1,
            "structured_output": "json_schema",
            **({"max_concurrency": judge_concurrency} if judge_concurrency else {}),
        },
    ]


def judge_settings(
    settings_factory: Callable[..., Settings],
    stub: StubLLM,
    judge_concurrency: int | None = None,
    **overrides: Any,
) -> Settings:
    """Settings for `judge_endpoints`; a test that must catch a job mid-way keeps the judge to
    `judge_concurrency` requests at a time."""
    values: dict[str, Any] = {
        "endpoints": judge_endpoints(stub, judge_concurrency),
        "worker_poll_seconds": 0.05,
        "worker_lease_seconds": 5,
    }
    values.update(overrides)
    return settings_factory(**values)


@pytest.fixture
def judge_api(
    settings_factory: Callable[..., Settings], judge_stub: JudgeStub
) -> Iterator[TestClient]:
    settings = judge_settings(settings_factory, judge_stub)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
