"""A scripted OpenAI-compatible model for pipeline logic tests: deterministic, fast, and able to
fail on demand. End-to-end tests use the bundled model and a real llama.cpp server instead."""

from __future__ import annotations

import random
import re
import threading
from typing import Any

from generators.prompts import build_classification_prompt
from tests.generators.fakes import Reply, ScriptedServer, chat_body, completion_body

WORDS = (
    "river budget letter garden protein holiday invoice planet recipe sonnet ladder museum "
    "tariff glacier violin harbor meadow courier pixel lantern orchard canyon ferry quilt "
    "saddle tundra walnut yacht zephyr anchor beacon cobalt dune ember fjord granite hazel "
    "ivory jasmine kettle lagoon marble nectar onyx pepper quartz raven summit thistle umber "
    "velvet willow xenon yarrow zinc acorn bramble cedar dahlia egret falcon gazelle heron "
    "iris juniper kestrel lotus magpie nutmeg oriole pelican quince robin sparrow tulip"
).split()
VERBS = "Explain Describe Compare Summarise Suggest Outline Rank Critique Plan Define".split()
ZH = "春夏秋冬山水花鸟风云月星江河湖海松竹梅兰书画琴棋茶酒诗词天地日光雨雪林石田园"
CLASSIFY_MARK = build_classification_prompt("x").text.split("\n", 1)[0][:40]


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
