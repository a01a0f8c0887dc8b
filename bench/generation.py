"""Completion tokens/s of the embedded `local` backend against llama.cpp's own server.

Both serve the same bundled GGUF with the same Self-Instruct sampling (temperature 0.7, top_p
0.5, presence penalty 2, same seed and llama.cpp samplers), one request at a time, in one run:

    python -m bench.generation --prompts 40

The baseline is `python -m llama_cpp.server` with its default threads, reached through the
`openai` backend; a second server with the local backend's thread count shows how much of the
ratio is thread count. `--threads` sets the local count. Contenders take turns prompt by prompt,
so a busy machine slows them alike. Prints tokens/s, local/server ratios, and how many texts
came out identical (same file, same sampler, same seed: they should all be).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from generators import (
    BUNDLED_MODEL_ID,
    Backend,
    LocalBackend,
    OpenAIBackend,
    SamplingParams,
)
from generators.llama_server import serve_llama_cpp
from generators.local import default_threads, usable_cores

# A small pool in the style of Self-Instruct seed tasks, written for this benchmark.
INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "Rewrite the sentence in the passive voice.",
    "Classify the sentiment of the review as positive or negative.",
    "Suggest a name for a bakery that sells only bread made with rye.",
    "Explain why the sky is blue to a ten-year-old.",
    "Summarize the paragraph in one sentence.",
    "Write a polite email declining a meeting invitation.",
    "List five countries that border Germany.",
    "Convert the temperature from Celsius to Fahrenheit.",
    "Find the grammatical error in the sentence and correct it.",
    "Generate a short riddle whose answer is 'time'.",
    "Describe the steps to make a cup of green tea.",
    "Decide whether the number is prime.",
    "Translate the phrase into French.",
    "Compare cats and dogs as pets in two sentences.",
    "Write a haiku about autumn rain.",
    "Propose a title for an article about remote work.",
    "Identify the main character's motivation in the story.",
    "Give an example of a metaphor and explain it.",
    "Sort the words in alphabetical order.",
]
HEADER = "Come up with a series of tasks:\n"
# Paper sampling: temperature 0.7, top_p 0.5, presence penalty 2, stop at the 16th item.
PAPER_PARAMS = SamplingParams(
    max_tokens=128,
    temperature=0.7,
    top_p=0.5,
    presence_penalty=2.0,
    stop=("\n\n", "\n16", "16.", "16 ."),
    seed=1234,
)
# llama.cpp's samplers beyond the OpenAI set, as the local backend uses them; the server's
# own default repeat_penalty is 1.1, so it is set explicitly.
SERVER_EXTRAS = {"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}


def build_prompts(count: int, seed: int = 0) -> list[str]:
    """Self-Instruct bootstrap prompts: 8 numbered instructions, the model writes item 9 on."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        shown = rng.sample(INSTRUCTIONS, 8)
        lines = [f"{i}. {text}" for i, text in enumerate(shown, start=1)]
        prompts.append(HEADER + "\n".join(lines) + "\n9.")
    return prompts


@dataclass
class Contender:
    label: str
    backend: Backend
    completion_tokens: int = 0
    seconds: float = 0.0
    texts: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds

    def line(self) -> str:
        return (
            f"{self.label:<58} {self.completion_tokens:>6} tokens in {self.seconds:6.1f} s"
            f" = {self.tokens_per_s:6.1f} tokens/s"
        )

    async def generate(self, prompt: str, params: SamplingParams) -> None:
        started = time.perf_counter()
        (result,) = await self.backend.generate([prompt], params)
        self.seconds += time.perf_counter() - started
        self.completion_tokens += result.completion_tokens
        self.texts.append(result.text)


def server_backend(url: str) -> OpenAIBackend:
    return OpenAIBackend(
        base_url=url, model=BUNDLED_MODEL_ID, max_concurrency=1, extra_body=SERVER_EXTRAS
    )


async def run(prompt_count: int, local_threads: int | None) -> None:
    prompts = build_prompts(prompt_count)
    cores = usable_cores()
    threads = local_threads or default_threads()
    print(
        f"{prompt_count} prompts, max_tokens={PAPER_PARAMS.max_tokens}, {cores} cores, "
        f"model {BUNDLED_MODEL_ID}"
    )
    with contextlib.ExitStack() as servers:
        quiet = ["--verbose", "false"]
        default_url = servers.enter_context(serve_llama_cpp(extra_args=quiet))
        contenders = [
            Contender(
                f"local backend (in-process, n_threads={threads})",
                LocalBackend(n_threads=local_threads),
            ),
            Contender(
                f"llama.cpp server (defaults: n_threads={max(cores // 2, 1)}, "
                f"n_threads_batch={cores})",
                server_backend(default_url),
            ),
        ]
        if (threads, threads) != (max(cores // 2, 1), cores):
            same_threads = ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
            url = servers.enter_context(serve_llama_cpp(extra_args=[*same_threads, *quiet]))
            contenders.append(
                Contender(f"llama.cpp server (n_threads={threads})", server_backend(url))
            )

        warm_up = PAPER_PARAMS.model_copy(update={"max_tokens": 8})
        for contender in contenders:
            await contender.backend.generate(prompts[:1], warm_up)
            contender.seconds = contender.completion_tokens = 0
            contender.texts.clear()
        # Interleaved, prompt by prompt, so every contender sees the same background load.
        for prompt in prompts:
            for contender in contenders:
                await contender.generate(prompt, PAPER_PARAMS)
        for contender in contenders:
            await contender.backend.aclose()

    local, *baselines = contenders
    for contender in contenders:
        print(contender.line())
    for baseline in baselines:
        same = sum(a == b for a, b in zip(local.texts, baseline.texts, strict=True))
        print(
            f"local / {baseline.label}: {local.tokens_per_s / baseline.tokens_per_s:.2f}x "
            f"({same}/{prompt_count} identical texts)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40, help="prompts per contender")
    parser.add_argument(
        "--threads", type=int, default=None, help="local n_threads (default: the backend's)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.prompts, args.threads))


if __name__ == "__main__":
    main()
