"""The `openai` backend streams: a remote server's text goes on as the server sends it, each
choice keeps its own index, and the backend copes with servers that ignore `n` or `stream` or
fail before or during the stream. Then the chat route passes a remote stream through.

A small event-stream server (`EventServer`) plays the remote end: it sends scripted events in
HTTP chunks and can hold between two events until the test lets it go on.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from generators import BadResponse, Generation, OpenAIBackend, SamplingParams
from generators.streaming import ChoiceDelta, StreamItem, stream
from testbed.scripted_llm import Reply, ScriptedServer
from tests.conftest import LLAMA_ALIAS, _wipe

pytestmark = pytest.mark.anyio

CHAT = [{"role": "user", "content": "Say hello."}]


def chunk(index: int, text: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "model": "fake-model",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


# A step of a streamed reply: an event's data, a gate to wait for, or a cut connection.
CUT = object()
Step = dict[str, Any] | str | threading.Event | object


@dataclass
class Streamed:
    steps: list[Step]
    status: int = 200


@dataclass
class EventServer:
    """Answers each POST with the next scripted reply (`Streamed` or a `Reply` sent whole),
    then with `default`; records the request bodies."""

    script: list[Streamed | Reply] = field(default_factory=list)
    default: Streamed | Reply | None = None
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next(self, body: dict[str, Any]) -> Streamed | Reply:
        with self._lock:
            self.bodies.append(body)
            reply = self.script.pop(0) if self.script else self.default
        assert reply is not None, "the server has no reply left"
        return reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply = server._next(json.loads(raw))
                if isinstance(reply, Reply):
                    payload = json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for step in reply.steps:
                    if isinstance(step, threading.Event):
                        step.wait(10)
                        continue
                    if step is CUT:  # mid-stream, as a server that dies
                        self.wfile.write(b"40\r\ndata: {")
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    data = step if isinstance(step, str) else json.dumps(step)
                    event = f"data: {data}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

        return Handler


@pytest.fixture
def events() -> Iterator[EventServer]:
    server = EventServer()
    yield server
    server.close()


def backend_for(url: str, **options: Any) -> OpenAIBackend:
    return OpenAIBackend(
        {
            "base_url": url,
            "model": "fake-model",
            "timeout_s": 5.0,
            "max_retries": 2,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.02,
            **options,
        }
    )


async def collect(
    items: Any, on_delta: Callable[[ChoiceDelta], None] | None = None
) -> tuple[list[ChoiceDelta], Generation]:
    deltas: list[ChoiceDelta] = []
    generation: Generation | None = None
    item: StreamItem
    async for item in items:
        if isinstance(item, ChoiceDelta):
            deltas.append(item)
            if on_delta is not None:
                on_delta(item)
        else:
            generation = item
    assert generation is not None
    return deltas, generation


async def test_text_goes_on_while_the_server_is_still_sending(events: EventServer) -> None:
    """The first piece reaches the caller while the server holds back the rest: nothing waits
    for the end of the answer."""
    gate = threading.Event()
    events.default = Streamed(
        [chunk(0, ""), chunk(0, "Hel"), gate, chunk(0, "lo"), chunk(0, None, "stop"), "[DONE]"]
    )
    backend = backend_for(events.base_url)
    items = stream(backend, CHAT, SamplingParams(max_tokens=8))
    first = await asyncio.wait_for(anext(items), timeout=5)
    assert first == ChoiceDelta(0, "Hel") and not gate.is_set()
    gate.set()
    deltas, generation = await collect(items)
    assert deltas == [ChoiceDelta(0, "lo"), ChoiceDelta(0, "", "stop")]
    assert generation.text == "Hello" and generation.finish_reason == "stop"
    assert events.bodies[0]["stream"] is True and events.bodies[0]["n"] == 1
    assert backend.stats.calls == 1 and backend.replicas[0].in_flight == 0
    await backend.aclose()


async def test_interleaved_choices_keep_their_index_and_usage_is_the_servers(
    events: EventServer,
) -> None:
    last = chunk(1, None, "length")
    last["usage"] = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    events.default = Streamed(
        [
            chunk(0, "a"),
            chunk(1, "x"),
            chunk(0, "b"),
            chunk(0, None, "stop"),
            chunk(1, "y"),
            last,
            "[DONE]",
        ]
    )
    backend = backend_for(events.base_url)
    deltas, generation = await collect(stream(backend, CHAT, SamplingParams(n=2)))
    assert [(d.index, d.text, d.finish_reason) for d in deltas] == [
        (0, "a", None),
        (1, "x", None),
        (0, "b", None),
        (0, "", "stop"),
        (1, "y", None),
        (1, "", "length"),
    ]
    assert [(c.index, c.text, c.finish_reason) for c in generation.choices] == [
        (0, "ab", "stop"),
        (1, "xy", "length"),
    ]
    assert (generation.prompt_tokens, generation.completion_tokens) == (9, 4)
    assert not generation.usage_estimated and len(events.bodies) == 1
    await backend.aclose()


async def test_a_server_that_ignores_n_gets_follow_up_streams(events: EventServer) -> None:
    """llama.cpp's servers answer one choice whatever `n` asks; the next streams are asked for
    the rest, with a new seed, and their choices numbered after the first's."""
    events.script = [
        Streamed([chunk(0, f"choice {i}"), chunk(0, None, "stop"), "[DONE]"]) for i in range(3)
    ]
    backend = backend_for(events.base_url)
    deltas, generation = await collect(stream(backend, CHAT, SamplingParams(n=3, seed=5)))
    assert [(d.index, d.text) for d in deltas if d.text] == [
        (0, "choice 0"),
        (1, "choice 1"),
        (2, "choice 2"),
    ]
    assert [c.text for c in generation.choices] == ["choice 0", "choice 1", "choice 2"]
    assert [(b["n"], b["seed"]) for b in events.bodies] == [(3, 5), (2, 6), (1, 7)]
    assert generation.usage_estimated  # these servers sent no usage
    await backend.aclose()


async def test_a_server_that_ignores_stream_has_its_whole_answer_passed_on(
    fake_server: ScriptedServer,
) -> None:
    fake_server.default = Reply(
        body={
            "model": "fake-model",
            "choices": [
                {"index": 0, "message": {"content": "whole"}, "finish_reason": "length"},
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )
    backend = backend_for(fake_server.base_url)
    deltas, generation = await collect(stream(backend, CHAT, SamplingParams()))
    assert deltas == [ChoiceDelta(0, "whole", "length")]
    assert generation.text == "whole" and generation.completion_tokens == 2
    assert fake_server.requests_to("/chat/completions")[0].body["stream"] is True  # type: ignore[index]
    await backend.aclose()


async def test_a_failure_before_the_stream_begins_is_retried(events: EventServer) -> None:
    events.script = [
        Reply(status=503, body={"error": {"message": "loading"}}),
        Streamed([chunk(0, "fine"), chunk(0, None, "stop"), "[DONE]"]),
    ]
    backend = backend_for(events.base_url)
    _, generation = await collect(stream(backend, CHAT, SamplingParams()))
    assert generation.text == "fine" and generation.attempts == 2
    assert backend.stats.retries == 1
    await backend.aclose()


@pytest.mark.parametrize(
    ("failure", "says"),
    [({"error": {"message": "out of memory"}}, "out of memory"), (CUT, "broke off")],
    ids=["error-event", "cut-connection"],
)
async def test_a_stream_that_fails_midway_ends_in_an_error_without_a_retry(
    events: EventServer, failure: Step, says: str
) -> None:
    """What was sent stays sent; asking again would repeat it, so the stream ends in an error
    naming what happened, and the replica's slot is free again."""
    events.default = Streamed([chunk(0, "half"), failure])
    backend = backend_for(events.base_url)
    seen: list[ChoiceDelta] = []
    with pytest.raises(BadResponse, match=says) as raised:
        await collect(stream(backend, CHAT, SamplingParams()), seen.append)
    assert seen == [ChoiceDelta(0, "half")]
    assert raised.value.attempts == 1 and len(events.bodies) == 1
    assert backend.stats.failed_calls == 1 and backend.replicas[0].in_flight == 0
    await backend.aclose()


async def test_a_reader_that_stops_early_frees_the_replica(events: EventServer) -> None:
    gate = threading.Event()
    events.default = Streamed([chunk(0, "one"), gate, chunk(0, "two"), "[DONE]"])
    backend = backend_for(events.base_url)
    items = stream(backend, CHAT, SamplingParams())
    assert (await anext(items)).text == "one"  # type: ignore[union-attr]
    assert backend.replicas[0].in_flight == 1
    await items.aclose()
    gate.set()
    assert backend.replicas[0].in_flight == 0 and backend.pending == 0
    await backend.aclose()


@pytest.fixture
def remote_chat(
    events: EventServer, settings_factory: Callable[..., Settings]
) -> Iterator[TestClient]:
    endpoint = {
        "name": "remote",
        "base_url": events.base_url,
        "models": ["remote-model"],
        "mode": "chat",
        "max_retries": 0,
    }
    settings = settings_factory(endpoints=[endpoint], embedded_worker=False)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


def test_the_chat_route_passes_a_remote_stream_on_chunk_by_chunk(
    events: EventServer, remote_chat: TestClient
) -> None:
    events.default = Streamed(
        [chunk(0, "a"), chunk(1, "x"), chunk(0, None, "stop"), chunk(1, None, "stop"), "[DONE]"]
    )
    body = {"model": "remote-model", "messages": CHAT, "n": 2, "stream": True}
    with remote_chat.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    choices = [json.loads(line)["choices"][0] for line in lines[:-1]]
    assert [(c["index"], c["delta"], c["finish_reason"]) for c in choices] == [
        (0, {"role": "assistant", "content": ""}, None),
        (0, {"content": "a"}, None),
        (1, {"role": "assistant", "content": ""}, None),
        (1, {"content": "x"}, None),
        (0, {}, "stop"),
        (1, {}, "stop"),
    ]
    assert events.bodies[0]["stream"] is True and events.bodies[0]["n"] == 2


def test_a_remote_failure_midway_ends_the_chat_stream_with_an_error_event(
    events: EventServer, remote_chat: TestClient
) -> None:
    events.default = Streamed([chunk(0, "half"), {"error": {"message": "out of memory"}}])
    body = {"model": "remote-model", "messages": CHAT, "stream": True}
    with remote_chat.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in lines
    error = json.loads(lines[-1])["error"]
    assert error["type"] == "upstream_error" and "out of memory" in error["message"]


def test_a_remote_failure_before_the_first_chunk_is_a_502(
    events: EventServer, remote_chat: TestClient
) -> None:
    events.default = Reply(status=400, body={"error": {"message": "bad model"}})
    body = {"model": "remote-model", "messages": CHAT, "stream": True}
    answer = remote_chat.post("/v1/chat/completions", json=body)
    assert answer.status_code == 502 and "bad model" in answer.json()["detail"]


@pytest.mark.real
async def test_a_real_llama_cpp_server_streams_each_choice(llama_server: str) -> None:
    """llama-cpp-python's server streams one choice per request: n=2 takes two streams, and
    each choice's pieces join into the text the caller gets at the end."""
    backend = backend_for(llama_server, model=LLAMA_ALIAS, timeout_s=60)
    params = SamplingParams(n=2, max_tokens=8, temperature=0.7, seed=3)
    deltas, generation = await collect(stream(backend, CHAT, params))
    assert [c.index for c in generation.choices] == [0, 1]
    for choice in generation.choices:
        pieces = [d for d in deltas if d.index == choice.index]
        assert len([d for d in pieces if d.text]) > 1  # piece by piece, not whole
        assert "".join(d.text for d in pieces) == choice.text != ""
        assert [d.finish_reason for d in pieces if d.finish_reason] == [choice.finish_reason]
    await backend.aclose()
