"""Streamed chat completions on the real bundled model, through a real server: with n > 1 each
choice's chunks leave as they are made, and a client that hangs up frees the model at once.

A real `selfinstruct serve` subprocess: the test client of Starlette hands over a streamed body
only once it is complete, which would hide exactly what these tests look at.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from app.db import migrate
from app.settings import BUNDLED_MODEL_ID, Settings
from testbed.live import free_port, serve_api, wait_ready

pytestmark = pytest.mark.real

# Greedy, so every choice is the same text of the same length; counting never ends early.
COUNTING = {
    "model": BUNDLED_MODEL_ID,
    "messages": [{"role": "user", "content": "Count from 1 to 100, separated by commas."}],
    "temperature": 0,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module, the model loaded; room for one chat at a time."""
    data_dir = tmp_path_factory.mktemp("chat-stream")
    db_url = f"sqlite:///{data_dir / 'chat.db'}"
    migrate(Settings(database_url=db_url, data_dir=data_dir))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DATABASE_URL": db_url,
        "SELFINSTRUCT_DATA_DIR": str(data_dir),
        "SELFINSTRUCT_EMBEDDED_WORKER": "false",
        "SELFINSTRUCT_LOCAL_QUEUE_SIZE": "1",
    }
    port = free_port()
    process = serve_api(env, port, data_dir / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        load = httpx.post(f"{base}/v1/chat/completions", json={**COUNTING, "max_tokens": 1})
        assert load.status_code == 200, load.text
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log = (data_dir / "server.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]


@dataclass
class Received:
    """A streamed answer as the client saw it, with when each chunk arrived."""

    chunks: list[dict[str, object]] = field(default_factory=list)
    arrived_s: list[float] = field(default_factory=list)
    done: bool = False

    def first(self, index: int, kind: str) -> float:
        """When choice `index` first had a chunk of `kind` (role, content or finish)."""
        return next(
            t for c, t in zip(self.chunks, self.arrived_s, strict=True) if self._is(c, index, kind)
        )

    def text(self, index: int) -> str:
        return "".join(
            str(c["choices"][0]["delta"].get("content", ""))  # type: ignore[index]
            for c in self.chunks
            if c["choices"] and c["choices"][0]["index"] == index  # type: ignore[index]
        )

    @staticmethod
    def _is(chunk: dict[str, object], index: int, kind: str) -> bool:
        choices = chunk["choices"]
        if not choices or choices[0]["index"] != index:  # type: ignore[index]
            return False
        choice = choices[0]  # type: ignore[index]
        if kind == "finish":
            return choice["finish_reason"] is not None
        return bool(choice["delta"].get(kind))


def _stream(base: str, body: dict[str, object]) -> Received:
    received = Received()
    started = time.perf_counter()
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "data: [DONE]":
                received.done = True
            elif line.startswith("data: "):
                received.chunks.append(json.loads(line[6:]))
                received.arrived_s.append(time.perf_counter() - started)
    return received


def test_streamed_choices_leave_one_after_another_as_they_are_made(server: str) -> None:
    """n=3 on two cores: the choices are made one after another, and each one's chunks go out
    while it is made: the first text arrives long before the last choice begins, not in one
    burst at the end. Joined, the chunks are the answer the same request gets unstreamed."""
    body = {**COUNTING, "n": 3, "max_tokens": 24}
    got = _stream(server, {**body, "stream": True})
    assert got.done
    assert {c["object"] for c in got.chunks} == {"chat.completion.chunk"}
    first_text = got.first(0, "content")
    last_begins, last_ends = got.first(2, "content"), got.first(2, "finish")
    for index in range(3):  # role, then text, then finish; choice after choice
        assert got.first(index, "role") <= got.first(index, "content") <= got.first(index, "finish")
        if index:
            assert got.first(index, "role") >= got.first(index - 1, "finish")
    # Sent as made, the last choice's first chunk comes two choices' generation after the first
    # text (about 2/3 of the whole); sent at the end, all chunks would come within milliseconds.
    assert last_begins - first_text > 0.4 * last_ends, got.arrived_s

    whole = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120).json()
    texts = [choice["message"]["content"] for choice in whole["choices"]]
    assert [got.text(i) for i in range(3)] == texts
    assert len(set(texts)) == 1 and texts[0].startswith("1, 2, 3")


def test_the_stream_ends_with_usage_when_asked(server: str) -> None:
    got = _stream(
        server,
        {
            **COUNTING,
            "n": 2,
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    last = got.chunks[-1]
    assert got.done and last["choices"] == []
    usage = last["usage"]
    assert isinstance(usage, dict)
    assert usage["completion_tokens"] == 12  # 6 tokens for each choice, none ended early
    assert usage["prompt_tokens"] > 10
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_client_that_hangs_up_frees_the_model_at_once(server: str) -> None:
    """With room for one chat, a streamed chat whose client leaves after its first chunk gives
    the model back then, not after the rest of its 8 x 512 tokens (a minute or more here): the
    next chat is answered within seconds of the first one's start."""
    endless = {"role": "user", "content": "Count from 1 to 10000, separated by commas."}
    body = {**COUNTING, "messages": [endless], "n": 8, "max_tokens": 512, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        next(line for line in response.iter_lines() if '"content": "' in line)
    while True:  # the server notices the hang-up within moments; 429 until then
        answer = httpx.post(
            f"{server}/v1/chat/completions", json={**COUNTING, "max_tokens": 2}, timeout=60
        )
        if answer.status_code != 429 or time.monotonic() - started > 15:
            break
        time.sleep(0.2)
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 15


def test_a_prompt_longer_than_the_context_fails_before_the_stream_starts(server: str) -> None:
    """An error the model meets at once comes back as a status, not as a broken stream."""
    long = {"role": "user", "content": "word " * 3000}  # past the 2,048-token context
    body = {**COUNTING, "messages": [long], "max_tokens": 4, "stream": True}
    answer = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120)
    assert answer.status_code == 502, answer.text
    assert "context window" in answer.json()["detail"]
