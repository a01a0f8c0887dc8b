"""The one scripted OpenAI-compatible model server that tests and benchmarks share.

`ScriptedServer` (an HTTP server on 127.0.0.1, in a thread) answers from a script: the failures a
real server will not produce on demand (429s, 500s, hangs, truncated bodies, empty choice lists).
`StubLLM` is the same server answering each prompt kind of the pipeline plausibly when nothing is
scripted: deterministic, fast, and able to fail on demand, for pipeline logic tests and the load
benchmark. End-to-end tests use the bundled model and a real llama.cpp server instead.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from generators.prompts import build_classification_prompt

# Shared with bench/scripted_server.py, the throughput benchmark's own server (a process of its
# own on raw ASGI, so its CPU cost does not limit the figures): how the pipeline's prompts are told
# apart, and what an answer's first word is.
CLASSIFY_MARK = build_classification_prompt("x").text.split("\n", 1)[0][:40]
VERBS = "Explain Describe Compare Summarise Suggest Outline Rank Critique Plan Define".split()
# SmolLM2's chat template, as its GGUF file stores it: ChatML with a default system turn.
# What a scripted server reports at /props, as llama.cpp's server does, for magpie runs.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def completion_body(text: str = "ok", *, finish_reason: str = "stop", n: int = 1) -> dict[str, Any]:
    """A well-formed `/v1/completions` answer."""
    return {
        "id": "cmpl-test",
        "object": "text_completion",
        "model": "fake-model",
        "choices": [{"index": i, "text": text, "finish_reason": finish_reason} for i in range(n)],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2 * n, "total_tokens": 5 + 2 * n},
    }


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


@dataclass
class Reply:
    """One scripted answer: a status, a body (JSON object or raw bytes), headers, and an
    optional delay before answering (a hang, when longer than the client's timeout)."""

    status: int = 200
    body: dict[str, Any] | bytes = field(default_factory=completion_body)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


class _Listener(ThreadingHTTPServer):
    # The default backlog of 5 refuses connections when a run opens dozens at once.
    request_queue_size = 512
    daemon_threads = True


class ScriptedServer:
    """An OpenAI-shaped HTTP server on 127.0.0.1 that answers from a script.

    Requests take replies from `script` in order; `by_prompt` answers a given prompt the same way
    every time; when both are empty, `default` answers.
    """

    def __init__(self, port: int = 0) -> None:
        self.script: deque[Reply] = deque()
        self.by_prompt: dict[str, Reply] = {}
        self.default = Reply()
        self.props: dict[str, Any] | None = None  # llama.cpp's GET /props, when set
        self.received: list[Received] = []
        self.in_flight = 0  # requests being answered now
        self._connections: set[socket.socket] = set()
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = _Listener(("127.0.0.1", port), self._handler_class())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def requests_to(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path.endswith(path)]

    def _next_reply(self, body: dict[str, Any] | None) -> Reply:
        with self._lock:
            prompt = body.get("prompt") if body else None
            if isinstance(prompt, str) and prompt in self.by_prompt:
                return self.by_prompt[prompt]
            return self.script.popleft() if self.script else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._connections.discard(self.connection)
                super().finish()

            def _answer(self) -> None:
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                self._counted = True
                try:
                    self._reply()
                finally:
                    self._done()

            def _done(self) -> None:
                """The request stops counting once its answer is ready to go: the client may
                send its next one as soon as it has read this one."""
                if self._counted:
                    self._counted = False
                    with server._lock:
                        server.in_flight -= 1

            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with server._lock:
                    server.received.append(
                        Received(self.command, self.path, dict(self.headers.items()), body)
                    )
                if self.command == "GET" and self.path.endswith("/models"):
                    reply = Reply(body={"object": "list", "data": [{"id": "fake-model"}]})
                elif self.command == "GET" and self.path.endswith("/props"):
                    reply = Reply(body=server.props or {}, status=200 if server.props else 404)
                else:
                    reply = server._next_reply(body)
                if reply.delay_s and server._closing.wait(reply.delay_s):
                    return
                payload = (
                    reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                )
                self._done()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting, as it should after its timeout

            do_GET = _answer
            do_POST = _answer

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut every open connection, as a server that dies would."""
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


WORDS = (
    "river budget letter garden protein holiday invoice planet recipe sonnet ladder museum "
    "tariff glacier violin harbor meadow courier pixel lantern orchard canyon ferry quilt "
    "saddle tundra walnut yacht zephyr anchor beacon cobalt dune ember fjord granite hazel "
    "ivory jasmine kettle lagoon marble nectar onyx pepper quartz raven summit thistle umber "
    "velvet willow xenon yarrow zinc acorn bramble cedar dahlia egret falcon gazelle heron "
    "iris juniper kestrel lotus magpie nutmeg oriole pelican quince robin sparrow tulip"
).split()
ZH = "春夏秋冬山水花鸟风云月星江河湖海松竹梅兰书画琴棋茶酒诗词天地日光雨雪林石田园"


class StubLLM(ScriptedServer):
    """Answers each prompt kind plausibly; scripted replies (faults) take precedence."""

    def __init__(self, *, seed: int = 0, items_per_completion: int = 4, port: int = 0) -> None:
        super().__init__(port=port)
        self.delay_s = 0.0  # per computed answer, to keep a run in flight for crash tests
        self.rng = random.Random(seed)
        self.items = items_per_completion
        self.rng_lock = threading.Lock()

    def _next_reply(self, body: dict[str, Any] | None) -> Reply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        if body and "messages" in body:  # a chat request (an evaluation): a plain answer
            with self.rng_lock:
                return Reply(body=chat_body(self.sentence(False)), delay_s=self.delay_s)
        prompt = (body or {}).get("prompt", "")
        with self.rng_lock:
            return Reply(body=completion_body(self.answer(prompt)), delay_s=self.delay_s)

    def sentence(self, chinese: bool) -> str:
        if chinese:
            return "请解释" + "".join(self.rng.sample(ZH, 8)) + "的含义。"
        return f"{self.rng.choice(VERBS)} the " + " ".join(self.rng.sample(WORDS, 7)) + "."

    def answer(self, prompt: str) -> str:
        chinese = bool(re.search(r"[\u4e00-\u9fff]{6}", prompt[:200]))
        tail = prompt.rstrip()
        if tail.endswith(("New task:", "新任务：")):  # evolve: a rewritten task
            return self.sentence(chinese)
        if tail.endswith(("Instruction:", "指令：")):  # backtranslate: what the passage answers
            return " " + self.sentence(chinese) + "\nInput: <noinput>"
        if prompt.endswith("<|im_start|>user\n"):  # magpie: the user's message
            return self.sentence(chinese)
        if prompt.endswith("<|im_start|>assistant\n"):  # magpie: the answer
            return "Sure. " + self.sentence(chinese)
        if prompt.startswith(CLASSIFY_MARK) or "标签是否固定有限" in prompt[-80:]:
            return " No"
        if prompt.rstrip().endswith(("Example 1", "示例 1")):
            if chinese:
                return "\n输入：" + self.sentence(True) + "\n输出：好的。" + self.sentence(True)
            return "\nInput: " + self.sentence(False) + "\nOutput: Sure. " + self.sentence(False)
        match = re.search(r"(\d+)\.\s*$", prompt)
        start = int(match.group(1)) if match else 9
        lines = [" " + self.sentence(chinese)]
        lines += [f"{n}. {self.sentence(chinese)}" for n in range(start + 1, start + self.items)]
        return "\n".join(lines)
