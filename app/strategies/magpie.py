"""magpie (Xu et al. 2024): the model writes the user's message itself, continuing its own chat
template up to where a user's turn starts; a second request answers it through the same
template. Needs the model's raw chat template, so a chat-only endpoint cannot serve it."""

from __future__ import annotations

import random
import zlib
from typing import TYPE_CHECKING, Any

from pydantic import Field

from app.errors import InvalidInput
from app.schemas.common import ErrorItem
from app.strategies.base import Candidate, ItemView, RunView, Strategy, StrictSpec, request_seed
from generators.base import Generation
from generators.chat_template import ChatTemplate
from generators.errors import UnsupportedRequest

if TYPE_CHECKING:
    from app.llm import ModelEntry

TEMPLATE_VERSION = "magpie-v1"
QUERY_TOKENS = 512  # a user's message; a longer one is cut off and dropped
ANSWER_SAMPLING = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 1024}


class MagpieSpec(StrictSpec):
    """Magpie: the model writes the user's message itself from its chat template's prefix."""

    system_prompt: str | None = Field(
        None, max_length=4000, description="Put in the template's system turn; None: its default."
    )
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="For the instruction.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="For the instruction.")


class MagpieFields(StrictSpec):
    magpie: MagpieSpec = Field(default_factory=MagpieSpec)


class Magpie(Strategy):
    name = "magpie"
    summary = "the model's own chat template writes the query"
    fields = MagpieFields
    uses_topic = False  # it shows the model nothing but its template
    needs = ("chat_template",)

    @classmethod
    def check_model(cls, model: ModelEntry) -> None:
        if model.backend == "openai" and model.mode == "chat":
            raise InvalidInput(
                f"strategy 'magpie' needs the model's raw chat template, but '{model.id}' is "
                "served chat-only (its endpoint's mode is `chat`), which cannot continue a "
                "template. Use a completion endpoint or the bundled model.",
                errors=[ErrorItem(field="strategy", reason="magpie needs a completion endpoint")],
            )

    def __init__(self, ctx: RunView) -> None:
        super().__init__(ctx)
        self.spec: MagpieSpec = self.setting("magpie")
        self._template: ChatTemplate | None = None

    async def chat_template(self) -> ChatTemplate:
        """The model's chat template, asked of the backend once."""
        if self._template is None:
            found = await self.ctx.backend.chat_template()
            if found is None:
                raise UnsupportedRequest(
                    f"model '{self.ctx.model_id}' reports no chat template; strategy magpie "
                    "needs one (set `chat_template` on its endpoint in SELFINSTRUCT_ENDPOINTS)"
                )
            self._template = found
        return self._template

    async def generate(self, rng: random.Random) -> list[Candidate] | None:
        template = await self.chat_template()
        sampling = {
            "temperature": self.spec.temperature,
            "top_p": self.spec.top_p,
            "max_tokens": QUERY_TOKENS,
            "seed": request_seed(rng),
        }
        prefix = template.user_prefix(self.spec.system_prompt)
        gen = await self.ctx.complete(prefix, sampling, template.stop_sequences(), raw=True)
        if gen is None:
            return None
        return self.answered(magpie_candidate(gen, self.ctx.lineage), gen.text)

    async def write_instances(self, item: ItemView) -> bool:
        """The model answers its own query through the same chat template: one instance."""
        template = await self.chat_template()
        prompt = template.answer_prompt(item.candidate.instruction, self.spec.system_prompt)
        # a seed of its own per query, reproducible from the run's seed and the query
        seed = (self.ctx.params.seed * 1_000_003 + zlib.crc32(prompt.encode())) % 2**31
        sampling = {**ANSWER_SAMPLING, "seed": seed}
        gen = await self.ctx.complete(prompt, sampling, template.stop_sequences(), raw=True)
        if gen is None:
            return True  # no instances: the candidate is rejected as instance_generation_failed
        answer = gen.text.strip()
        usable = answer and gen.finish_reason != "length"
        item.raw_instances = [{"input": "", "output": answer}] if usable else []
        return True


def magpie_candidate(generation: Generation, lineage: dict[str, Any]) -> Candidate | None:
    """What the model wrote as the user's message; None when empty or cut off."""
    if generation.finish_reason == "length":
        return None
    text = generation.text.strip()
    if not text:
        return None
    return Candidate(
        instruction=text,
        lineage={
            **lineage,
            "template_version": TEMPLATE_VERSION,
            "request_id": generation.request_id,
            "finish_reason": generation.finish_reason,
        },
    )
