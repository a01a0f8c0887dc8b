"""A model's own chat template, rendered as its tokenizer would, for prompts that need the raw
conversation text (strategy `magpie`).

Magpie (Xu et al. 2024) sends an aligned model only the template's text up to where a user's
message would begin; the model then writes a user query of its own. The answer comes from a
second request: the whole template around that query, up to where the assistant's turn begins.
Templates are Jinja, as Hugging Face tokenizers and GGUF files store them; they render in a
sandbox, since a template is data that came with a model file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from generators.errors import UnsupportedRequest

_MARK = "\u2063MAGPIE-USER-TURN\u2063"  # a text no template writes itself


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and the special tokens it refers to."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    @cached_property
    def _compiled(self) -> Template:
        """Compiled once: magpie renders the template two or three times per candidate."""

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.source)
        except TemplateError as exc:
            raise UnsupportedRequest(f"the model's chat template does not compile: {exc}") from exc

    def render(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool) -> str:
        try:
            return self._compiled.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise UnsupportedRequest(f"the model's chat template does not render: {exc}") from exc

    def _text(self, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        """The rendered conversation, without a leading BOS the template wrote itself: the
        engine adds its own when the model wants one, and two degrade the answer."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        if self.bos_token and "bos_token" in self.source:
            text = text.removeprefix(self.bos_token)
        return text

    def _around_user(self, system: str | None) -> tuple[str, str]:
        messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        text = self._text([*messages, {"role": "user", "content": _MARK}], **_NO_ASSISTANT)
        before, found, after = text.partition(_MARK)
        if not found:
            raise UnsupportedRequest("the model's chat template does not show the user's message")
        return before, after

    def user_prefix(self, system: str | None = None) -> str:
        """The conversation's text up to where the user's first message begins."""
        return self._around_user(system)[0]

    def answer_prompt(self, query: str, system: str | None = None) -> str:
        """The conversation with `query` as the user's message, up to the assistant's answer."""
        messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        return self._text([*messages, {"role": "user", "content": query}], **_ASSISTANT)

    def stop_sequences(self) -> tuple[str, ...]:
        """What ends a turn: the text after a user's message up to its first line break (e.g.
        `<|im_end|>`), and the end-of-sequence token."""
        after = self._around_user(None)[1]
        end = after.split("\n", 1)[0].strip()
        return tuple(dict.fromkeys(s for s in (end, self.eos_token) if s))


_NO_ASSISTANT: dict[str, Any] = {"add_generation_prompt": False}
_ASSISTANT: dict[str, Any] = {"add_generation_prompt": True}
