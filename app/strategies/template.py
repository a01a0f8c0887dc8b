"""template: no model writes the instruction. Each candidate fills a random `{slot}` template
with a random value per slot; the model (if `generate_instances` is on) writes its instances."""

from __future__ import annotations

import math
import random
import re
import string
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from app.strategies.base import Candidate, RunCreate, RunView, Strategy, StrictSpec, setting_of

# A template: text with `{slot}` placeholders, a slot's name free of `. [ ] ! :` and not only
# digits (str.format would read those as attributes, indexes, conversions, formats or positions);
# `{{` and `}}` are literal braces. The schema states it; the validator says what is wrong.
TEMPLATE_PATTERN = r"^(?:[^{}]|\{\{|\}\}|\{[^{}.\[\]!:]*[^{}.\[\]!:0-9][^{}.\[\]!:]*\})*$"
SLOTS_NEED_VALUES = "every `{slot}` in `templates` needs a non-empty list in `values`"
DRAWS_PER_TURN = 4  # candidates drawn at once per prompt of `prompts_per_batch`
SPACE_TRIES = 20  # the run stops drawing once it made this many candidates per distinct one
TEMPLATE_VERSION = "template-v1"


class TemplateSpec(StrictSpec):
    """Instruction templates with `{slot}` placeholders filled from value lists. Rule between
    fields: every `{slot}` in `templates` needs a non-empty list in `values`."""

    templates: list[Annotated[str, Field(json_schema_extra={"pattern": TEMPLATE_PATTERN})]] = Field(
        min_length=1,
        max_length=1000,
        description="E.g. 'Write a {tone} poem about {topic}.'; `{{` and `}}` for braces.",
    )
    values: dict[str, list[str]] = Field(
        default_factory=dict, description="Each slot's values, e.g. {'tone': ['sad', 'funny']}."
    )

    @field_validator("templates")
    @classmethod
    def _well_formed(cls, templates: list[str]) -> list[str]:
        for i, template in enumerate(templates):
            if re.fullmatch(TEMPLATE_PATTERN, template) is None:
                raise ValueError(
                    f"templates[{i}] {template!r}: write each slot as `{{name}}` (a name without "
                    ". [ ] ! : and not only digits), and literal braces as `{{` and `}}`"
                )
        return templates

    @model_validator(mode="after")
    def _slots_have_values(self) -> TemplateSpec:
        missing = sorted(
            {slot for t in self.templates for slot in template_slots(t)}
            - {name for name, values in self.values.items() if values}
        )
        if missing:
            raise ValueError(f"{SLOTS_NEED_VALUES} (missing: {', '.join(map(repr, missing))})")
        return self


def template_slots(template: str) -> list[str]:
    """The slot names of a well-formed template, in order of first use."""
    return list(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(template) if f))


def template_candidates(
    spec: TemplateSpec, *, n: int, rng: random.Random, lineage: dict[str, Any]
) -> list[Candidate]:
    """Fill `n` random templates; duplicates are left for the novelty filter to reject."""
    out = []
    for _ in range(n):
        template = rng.choice(spec.templates)
        values = {slot: rng.choice(spec.values[slot]) for slot in template_slots(template)}
        out.append(
            Candidate(
                instruction=template.format(**values),
                lineage={
                    **lineage,
                    "template": template,
                    "slots": values,
                    "template_version": TEMPLATE_VERSION,
                },
            )
        )
    return out


def template_space(spec: TemplateSpec) -> int:
    """How many distinct instructions the templates can make, to stop when all were tried."""
    total = 0
    for template in spec.templates:
        total += math.prod(len(spec.values[s]) for s in template_slots(template))
    return total


class TemplateFields(StrictSpec):
    template: TemplateSpec | None = None


class Template(Strategy):
    name = "template"
    summary = "no model"
    fields = TemplateFields
    rule = "strategy 'template' needs a `template` with templates and values"
    uses_topic = False  # it shows no pool tasks
    uses_model = False

    @classmethod
    def check_params(cls, params: RunCreate) -> None:
        if setting_of(params, "template") is None:
            raise ValueError(cls.rule)

    def __init__(self, ctx: RunView) -> None:
        super().__init__(ctx)
        self.spec: TemplateSpec = self.setting("template")
        self.space = template_space(self.spec)

    async def generate(self, rng: random.Random) -> list[Candidate] | None:
        n = self.ctx.params.prompt.prompts_per_batch * DRAWS_PER_TURN
        return template_candidates(self.spec, n=n, rng=rng, lineage=self.ctx.lineage)

    def can_prompt(self, *, launching: int, candidates: int) -> bool:
        # Tried its whole value space many times over: the run ends `stalled`, not succeeded.
        return candidates < SPACE_TRIES * self.space
