"""alpaca (Stanford Alpaca's variant of the bootstrap): each prompt shows 3 whole pool tasks
(instruction, input, output) and asks for `alpaca_tasks` more, which bring their one instance."""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import Field

from app.strategies.base import Candidate, Strategy, StrictSpec
from app.strategies.pool import examples
from app.strategies.self_instruct import prompt_lineage
from generators.parsing import parse_alpaca_completion
from generators.prompts import PromptExample, build_alpaca_prompt, sample_prompt_examples

EXAMPLES = 3  # whole tasks shown per prompt, at most one of them generated


class AlpacaFields(StrictSpec):
    alpaca_tasks: int = Field(20, ge=4, le=100, description="Tasks asked for per alpaca prompt.")


class Alpaca(Strategy):
    name = "alpaca"
    summary = "whole tasks per prompt"
    fields = AlpacaFields

    async def generate(self, rng: random.Random) -> list[Candidate] | None:
        ctx = self.ctx
        language = ctx.pick_language(rng)
        wording = ctx.prompt_language(language)
        seeds, machine = examples(
            ctx.pool, ctx.params.topic, ctx.params.prompt.examples_per_prompt, language
        )
        chosen = sample_prompt_examples(
            [s for s in seeds if s.output],
            _with_output(machine, rng),
            n_total=EXAMPLES,
            n_machine=1,
            rng=rng,
        )
        tasks: int = self.setting("alpaca_tasks")
        prompt = build_alpaca_prompt(chosen, num_tasks=tasks + len(chosen), language=wording)
        gen = await ctx.complete(
            prompt.text, ctx.sampling(), prompt.stop_sequences, language=wording
        )
        if gen is None:
            return None
        base = prompt_lineage(ctx.lineage, prompt.example_ids, prompt.template_version, gen)
        found = parse_alpaca_completion(gen.text, finish_reason=gen.finish_reason)
        return self.answered(
            [
                Candidate(
                    instruction=t["instruction"],
                    lineage=base,
                    instances=[{"input": t["input"], "output": t["output"]}],
                )
                for t in found
            ],
            gen.text,
        )


def _with_output(tasks: Sequence[PromptExample], rng: random.Random) -> list[PromptExample]:
    """Tasks that show an output: all of a small pool; a random few of a large one, where
    scanning every task for each prompt would cost more than the prompt."""
    if len(tasks) <= 5000:
        return [e for e in tasks if e.output]
    picked = {rng.randrange(len(tasks)) for _ in range(32)}
    return [tasks[i] for i in sorted(picked) if tasks[i].output]
