"""A scripted OpenAI-compatible server for throughput benchmarks: every request is answered
after exactly `latency` seconds, with no limit on how many are in flight, and every instruction
it writes is new (random words from a large made-up vocabulary), so nothing but the service
itself limits a run.

    python -m bench.scripted_server --port 8123 --latency 0.5

GET /stats reports requests answered and the most ever in flight, for the benchmark to read.
It answers each prompt kind of the pipeline plausibly: a numbered list for bootstrap prompts,
"No" for the classification check, an input/output pair for instance prompts, one task for
evolve, backtranslate and magpie prompts, and an answer for magpie's second request; GET /props
reports a chat template as llama.cpp's server does. Raw ASGI on uvicorn keeps its own CPU cost low.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import time
import zlib
from typing import Any

from testbed.scripted_llm import CHATML, CLASSIFY_MARK, VERBS

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
VOCAB = ["".join(p) for p in itertools.product(SYLLABLES, repeat=2)]  # 9,604 made-up words


class Script:
    def __init__(self, latency: float, seed: int = 0) -> None:
        self.latency = latency
        self.rng = random.Random(seed)
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = time.monotonic()

    def sentence(self) -> str:
        return f"{self.rng.choice(VERBS)} the " + " ".join(self.rng.sample(VOCAB, 9)) + "."

    def answer(self, prompt: str) -> str:
        if prompt.startswith(CLASSIFY_MARK):
            return " No"
        tail = prompt.rstrip()
        if tail.endswith("New task:") or prompt.endswith("<|im_start|>user\n"):
            return self.sentence()  # an evolved task; a magpie query
        if tail.endswith("Instruction:"):  # backtranslate: what the passage answers
            return f" {self.sentence()}\nInput: <noinput>"
        if prompt.endswith("<|im_start|>assistant\n"):
            return f"Sure. {self.sentence()}"
        if prompt.rstrip().endswith("Example 1"):
            return f"\nInput: {self.sentence()}\nOutput: Sure. {self.sentence()}"
        if tail.endswith(("Judgement:", "评审：")):  # the judge: a level from the prompt's hash
            level = "ABCD"[zlib.crc32(prompt.encode()) % 4]
            return f' {{"rating": "{level}", "rationale": "A scripted judgement."}}'
        match = re.search(r"(\d+)\.\s*$", prompt)
        start = int(match.group(1)) if match else 9
        lines = [" " + self.sentence()]
        lines += [f"{n}. {self.sentence()}" for n in range(start + 1, start + 6)]
        return "\n".join(lines)


def completion(text: str, chat: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": "cmpl-scripted",
        "object": "chat.completion" if chat else "text_completion",
        "model": "scripted",
        "choices": [choice],
        "usage": {"prompt_tokens": 200, "completion_tokens": 60, "total_tokens": 260},
    }


def make_app(script: Script) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path.endswith("/stats"):
            payload: dict[str, Any] = {
                "answered": script.answered,
                "in_flight": script.in_flight,
                "max_in_flight": script.max_in_flight,
                "time": time.monotonic(),
            }
        elif path.endswith("/models"):
            payload = {"object": "list", "data": [{"id": "scripted"}]}
        elif path.endswith("/props"):
            payload = {"chat_template": CHATML, "eos_token": "<|im_end|>"}
        else:
            script.in_flight += 1
            script.max_in_flight = max(script.max_in_flight, script.in_flight)
            try:
                request = json.loads(body or b"{}")
                chat = "messages" in request
                prompt = (
                    "\n".join(m.get("content", "") for m in request["messages"])
                    if chat
                    else str(request.get("prompt", ""))
                )
                await asyncio.sleep(script.latency)
                payload = completion(script.answer(prompt), chat)
                script.answered += 1
            finally:
                script.in_flight -= 1
        raw = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.5)
    args = parser.parse_args()
    uvicorn.run(
        make_app(Script(args.latency)),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
