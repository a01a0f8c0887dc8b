"""evolve (Evol-Instruct): each prompt rewrites one pool task by one operation, in depth (a
harder version) or in breadth (a new task of the same domain). Evolved tasks are evolved again
up to `max_depth`; the run ends `pool_fully_evolved` when every pool task is at it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.models import Task, TaskOrigin, TaskStatus
from app.strategies.base import Candidate, RunView, Strategy, StrictSpec, request_seed
from app.strategies.pool import Pool, examples
from generators.base import Generation
from generators.parsing import parse_evolved_task
from generators.prompts import (
    EVOLVE_OPERATIONS,
    EVOLVE_SAMPLING,
    LANGUAGES,
    PromptExample,
    TaskPrompt,
    build_evolve_prompt,
    strategy_wording,
)

if TYPE_CHECKING:
    from collections.abc import Iterable


PARENT_DRAWS = 20  # tries to find a parent below the depth limit before giving up on a prompt

EvolveOperation = Literal[
    "add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "breadth"
]
assert set(EvolveOperation.__args__) == set(EVOLVE_OPERATIONS)  # type: ignore[attr-defined]


class EvolveSpec(StrictSpec):
    """Evol-Instruct: each prompt rewrites one pool task by one operation."""

    operations: dict[EvolveOperation, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: dict.fromkeys(EVOLVE_OPERATIONS, 1.0),  # type: ignore[arg-type]
        min_length=1,
        description="Operations and their weights (each prompt draws one in proportion; leave "
        "one out to never use it): add_constraints, deepen, concretize, increase_reasoning, "
        "complicate_input (in depth) and breadth (a new task in the same domain).",
    )
    max_depth: int = Field(
        3, ge=1, le=20, description="A task evolved this many times is not evolved again."
    )


@dataclass(frozen=True)
class Evolution:
    """One evolve prompt: the parent task, the operation and the prompt that asks for it."""

    parent: PromptExample
    operation: str
    depth: int  # of the task this prompt asks for: the parent's + 1
    prompt: TaskPrompt


class EvolveFields(StrictSpec):
    evolve: EvolveSpec = Field(default_factory=EvolveSpec)


class Evolve(Strategy):
    name = "evolve"
    summary = "rewrite pool tasks"
    fields = EvolveFields

    def __init__(self, ctx: RunView) -> None:
        super().__init__(ctx)
        self.spec: EvolveSpec = self.setting("evolve")
        # Parents' evolution depths: read from the evolved tasks' lineage, kept for new ones.
        self.depths = evolution_depths(ctx.engine, ctx.dataset_id)
        self.nothing_to_evolve = False  # every pool task of a prompt's language is at max_depth

    def echo_wording(self) -> Iterable[str]:
        return [w for code in LANGUAGES for w in strategy_wording(code)]

    async def generate(self, rng: random.Random) -> list[Candidate] | None:
        ctx = self.ctx
        language = ctx.pick_language(rng)
        wording = ctx.prompt_language(language)
        evolution = evolve_job(
            pool=ctx.pool,
            spec=self.spec,
            topic=ctx.params.topic,
            language=language,
            wording=wording,
            depths=self.depths,
            rng=rng,
        )
        if evolution is None:
            self.nothing_to_evolve = True
            return []
        sampling = {**EVOLVE_SAMPLING.as_dict(), "seed": request_seed(rng)}
        prompt = evolution.prompt
        gen = await ctx.complete(prompt.text, sampling, prompt.stop_sequences, language=wording)
        if gen is None:
            return None
        return self.answered(evolved_candidate(evolution, gen, ctx.lineage), gen.text)

    def accepted(self, key: Any, candidate: Candidate) -> None:
        self.depths[key] = int(candidate.lineage["evolution_depth"])

    def renamed(self, key: Any, task_id: str) -> None:
        if key in self.depths:
            self.depths[task_id] = self.depths.pop(key)

    def exhausted(self) -> str | None:
        return "pool_fully_evolved" if self.nothing_to_evolve else None


def evolution_depths(engine: Engine, dataset_id: int) -> dict[str, int]:
    """How many times each accepted evolved task was evolved (others are depth 0)."""
    with Session(engine) as session:
        rows = session.exec(
            select(Task.id, Task.lineage).where(  # type: ignore[call-overload]
                Task.dataset_id == dataset_id,
                Task.status == TaskStatus.accepted.value,
                Task.origin == TaskOrigin.evolved.value,
            )
        )
        return {str(task_id): int(lineage.get("evolution_depth", 1)) for task_id, lineage in rows}


def evolve_job(
    *,
    pool: Pool,
    spec: EvolveSpec,
    topic: str | None,
    language: str,
    wording: str,
    depths: dict[str, int],
    rng: random.Random,
) -> Evolution | None:
    """Draw a parent (of `language`, nearest the topic when there is one) below the depth limit
    and an operation by its weight; None when no pool task can be evolved further."""
    seeds, machine = examples(pool, topic, 1, language)
    size = len(seeds) + len(machine)
    if not size:
        return None

    def draw() -> PromptExample:  # uniform over both lists, without joining a 1M-task pool
        i = rng.randrange(size)
        return seeds[i] if i < len(seeds) else machine[i - len(seeds)]

    # A few draws from everything; then from the seeds (never evolved, so always below the
    # limit); only a pool without seeds is scanned for what is left below it.
    below_limit = (
        p for p in (draw() for _ in range(PARENT_DRAWS)) if depths.get(p.id, 0) < spec.max_depth
    )
    parent = next(below_limit, None)
    if parent is None:
        rest = seeds or [t for t in machine if depths.get(t.id, 0) < spec.max_depth]
        if not rest:
            return None
        parent = rng.choice(rest)
    depth = depths.get(parent.id, 0)
    operations = spec.operations  # every weight is above 0 (the schema says so)
    operation = rng.choices(list(operations), weights=list(operations.values()))[0]
    prompt = build_evolve_prompt(
        parent.instruction, parent.input, operation=operation, language=wording
    )
    return Evolution(parent=parent, operation=operation, depth=depth + 1, prompt=prompt)


def evolved_candidate(
    evolution: Evolution, generation: Generation, lineage: dict[str, Any]
) -> Candidate | None:
    """The rewrite as a candidate; its parent's text goes along so screening can tell a real
    rewrite from a copy or a refusal (`evolution_failed`)."""
    task = parse_evolved_task(generation.text, finish_reason=generation.finish_reason)
    if task is None:
        return None
    parent = evolution.parent
    given = f"{parent.instruction}\n{parent.input}" if parent.input.strip() else parent.instruction
    return Candidate(
        instruction=task,
        origin=TaskOrigin.evolved.value,
        parent=given,
        lineage={
            **lineage,
            "parent_task_id": parent.id,
            "example_task_ids": [parent.id],
            "operation": evolution.operation,
            "evolution_depth": evolution.depth,
            "template_version": evolution.prompt.template_version,
            "request_id": generation.request_id,
            "finish_reason": generation.finish_reason,
        },
    )
