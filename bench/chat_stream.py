"""Time to the first chunk of a streamed chat with n > 1 on the bundled model, through HTTP.

    python -m bench.chat_stream [--n 4] [--max-tokens 128] [--rounds 5]

Starts `selfinstruct serve` (embedded worker off) on a fresh SQLite file and asks
`POST /v1/chat/completions` for `--n` choices, one request at a time, in turns: streamed, and
not streamed with the same seed. The baseline is the whole non-streamed answer: a stream that
waits for every choice before its first chunk (as this route did before it streamed as it
generated) cannot start sooner. Prints medians of the time to the first content chunk, the time
to each choice's first chunk, the whole stream and the whole answer, and the ratio of the first
chunk to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.db import migrate
from app.settings import BUNDLED_MODEL_ID, Settings

PROMPT = "Give three tips for staying healthy."


@dataclass
class Streamed:
    first_chunk_s: float  # the first chunk with text, of any choice
    choice_first_s: dict[int, float] = field(default_factory=dict)  # per choice index
    total_s: float = 0.0


@contextmanager
def serving(data_dir: Path) -> Iterator[str]:
    """`selfinstruct serve` on a migrated SQLite file; yields the base URL."""
    from testbed.live import running_api

    db_url = f"sqlite:///{data_dir / 'bench.db'}"
    migrate(Settings(database_url=db_url, data_dir=data_dir))
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "SELFINSTRUCT_DATA_DIR": str(data_dir),
        "SELFINSTRUCT_EMBEDDED_WORKER": "false",
    }
    with running_api(env, data_dir / "server.log") as base:
        yield base


def body(
    n: int, max_tokens: int, seed: int, stream: bool, question: str = PROMPT
) -> dict[str, object]:
    return {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": question}],
        "n": n,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": seed,
        "stream": stream,
    }


def streamed(client: httpx.Client, payload: dict[str, object]) -> Streamed:
    """Send one streamed request; note when each choice's first text arrived."""
    started = time.perf_counter()
    result = Streamed(first_chunk_s=float("nan"))
    with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter() - started
            for choice in json.loads(line[6:]).get("choices", []):
                if choice["delta"].get("content"):
                    result.choice_first_s.setdefault(choice["index"], now)
                    if result.first_chunk_s != result.first_chunk_s:  # still NaN
                        result.first_chunk_s = now
    result.total_s = time.perf_counter() - started
    return result


def forget_prompt(client: httpx.Client) -> None:
    """llama.cpp reuses the prompt it read last; another one first makes each contender read
    the question itself (same question, same seed: same choices)."""
    client.post(
        "/v1/chat/completions", json=body(1, 1, 0, False, "Name a color.")
    ).raise_for_status()


def whole(client: httpx.Client, payload: dict[str, object]) -> float:
    started = time.perf_counter()
    client.post("/v1/chat/completions", json=payload).raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="choices per request")
    parser.add_argument("--max-tokens", type=int, default=128, help="per choice")
    parser.add_argument("--rounds", type=int, default=5, help="requests of each kind")
    args = parser.parse_args()
    streams: list[Streamed] = []
    answers: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        serving(Path(tmp)) as base,
        httpx.Client(base_url=base, timeout=600) as client,
    ):
        whole(client, body(1, 4, 0, stream=False))  # loads the model
        for seed in range(args.rounds):
            forget_prompt(client)
            streams.append(streamed(client, body(args.n, args.max_tokens, seed, True)))
            forget_prompt(client)
            answers.append(whole(client, body(args.n, args.max_tokens, seed, False)))
    first = statistics.median(s.first_chunk_s for s in streams)
    baseline = statistics.median(answers)
    print(f"n={args.n}, max_tokens={args.max_tokens}, {args.rounds} rounds, {os.cpu_count()} CPUs")
    for index in range(args.n):
        arrivals = [s.choice_first_s[index] for s in streams if index in s.choice_first_s]
        if arrivals:
            print(f"  choice {index}: first chunk after {statistics.median(arrivals):.2f} s")
    print(f"first chunk (streamed):       {first:.2f} s")
    print(f"whole stream:                 {statistics.median(s.total_s for s in streams):.2f} s")
    print(f"whole answer (baseline):      {baseline:.2f} s")
    print(f"first chunk / baseline:       {first / baseline:.3f}x")


if __name__ == "__main__":
    main()
