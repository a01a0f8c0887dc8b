"""self_instruct, the paper's bootstrap: each prompt shows pool instructions as a numbered list
(up to `machine_examples` of them generated, the rest seeds) and the model continues it."""

from __future__ import annotations

import random
from typing import Any

from app.strategies.base import Candidate, Strategy
from app.strategies.pool import examples
from generators.base import Generation
from generators.parsing import parse_bootstrap_completion
from generators.prompts import (
    BootstrapPrompt,
    as_example,
    build_bootstrap_prompt,
    sample_prompt_examples,
)


class SelfInstruct(Strategy):
    name = "self_instruct"
    summary = "the paper's bootstrap"

    async def generate(self, rng: random.Random) -> list[Candidate] | None:
        ctx = self.ctx
        language = ctx.pick_language(rng)
        wording = ctx.prompt_language(language)
        seeds, machine = examples(
            ctx.pool, ctx.params.topic, ctx.params.prompt.examples_per_prompt, language
        )
        mix = ctx.params.prompt
        chosen = sample_prompt_examples(
            seeds, machine, n_total=mix.examples_per_prompt, n_machine=mix.machine_examples, rng=rng
        )
        # Examples in other languages only (a run asking for a language the pool lacks):
        # the prompt says which language to write in and starts the next item in it.
        foreign = bool(chosen) and all(
            e.language and e.language != wording for e in map(as_example, chosen)
        )
        prompt = build_bootstrap_prompt(
            chosen,
            language=wording,
            header=mix.header,
            numbering=mix.numbering,
            stop_at=mix.stop_at,
            foreign_examples=foreign and language == wording,
        )
        gen = await ctx.complete(
            prompt.text, ctx.sampling(), prompt.stop_sequences, language=wording
        )
        if gen is None:
            return None
        return self.answered(listed_candidates(prompt, gen, ctx.lineage), gen.text)


def prompt_lineage(
    lineage: dict[str, Any], example_ids: tuple[str, ...], template_version: str, gen: Generation
) -> dict[str, Any]:
    """What every candidate of a list prompt records: the run's lineage, the examples shown,
    the prompt's wording and the answer it came from."""
    return {
        **lineage,
        "example_task_ids": list(example_ids),
        "template_version": template_version,
        "request_id": gen.request_id,
        "finish_reason": gen.finish_reason,
    }


def listed_candidates(
    prompt: BootstrapPrompt, gen: Generation, lineage: dict[str, Any]
) -> list[Candidate]:
    """The numbered items the model wrote after the prompt's last label."""
    items = parse_bootstrap_completion(
        prompt.lead + gen.text,
        next_number=prompt.next_number,
        finish_reason=gen.finish_reason,
        numbering=prompt.numbering,
        stop_at=prompt.stop_at,
    )
    base = prompt_lineage(lineage, prompt.example_ids, prompt.template_version, gen)
    return [Candidate(instruction=text, lineage=base) for text in items]
