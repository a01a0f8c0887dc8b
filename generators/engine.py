"""What an in-process engine gives the `local` backend: one `Sample` per choice, through the
`LoadedModel` protocol. llama.cpp (generators/local.py) and transformers (generators/hf.py) each
implement it; it lives here, below both, so neither engine imports the other's module.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from generators.base import ChatMessage, FinishReason, SamplingParams
from generators.chat_template import ChatTemplate


@dataclass
class Sample:
    """One choice as an engine produced it."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool = False  # counted by tokenizing, where the engine reported none


class LoadedModel(Protocol):
    """What the backend needs from an engine; calls must hold `lock`."""

    lock: threading.Lock

    def complete(
        self, prompt: str, params: SamplingParams, seed: int, extra: Mapping[str, Any]
    ) -> Sample: ...

    def chat(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        seed: int,
        extra: Mapping[str, Any],
    ) -> Sample: ...

    def chat_template(self) -> ChatTemplate | None: ...
