"""Strategies: from the pool to candidate instructions. One function per way of constructing.

`self_instruct` and `alpaca` ask the model to continue a list of pool tasks; `template` fills
instruction templates from value lists without a model. `evolve` rewrites one pool task by one
operation (Evol-Instruct); `backtranslate` asks which instruction a passage of the user's
documents answers; `magpie` lets a chat model write the user's turn from its own template. A
`topic` narrows the pool tasks a prompt shows (or evolves) to those nearest to it, which steers
generation toward a domain.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.models import TaskOrigin, holdout_key
from app.run_schemas import EvolveSpec, RunCreate, TemplateSpec, template_slots
from app.services.heldout import split_of
from filters.novelty import NoveltyIndex
from generators.base import Generation
from generators.parsing import (
    parse_alpaca_completion,
    parse_backtranslation,
    parse_bootstrap_completion,
    parse_evolved_task,
)
from generators.prompts import (
    PromptExample,
    TaskPrompt,
    as_example,
    build_alpaca_prompt,
    build_backtranslate_prompt,
    build_bootstrap_prompt,
    build_evolve_prompt,
    sample_prompt_examples,
)

TOPIC_NEIGHBOURS = 16  # at least this many pool tasks nearest to a topic are sampled from


@dataclass
class Pool:
    """The dataset's accepted tasks as the pipeline sees them; grows as candidates are accepted."""

    seeds: list[PromptExample] = field(default_factory=list)
    machine: list[PromptExample] = field(default_factory=list)
    index: NoveltyIndex = field(default_factory=NoveltyIndex)
    # The same examples by language, kept as they arrive: a prompt in one language must not
    # scan a pool of 1M tasks to find its examples.
    by_language: dict[str, tuple[list[PromptExample], list[PromptExample]]] = field(
        default_factory=dict
    )

    # The dataset's held-out share: tasks on the held-out side stay in the novelty index (nothing
    # near them is accepted) but are never shown to the model, as an example, an evolve parent or
    # a topic's neighbour, so an evaluation on them is not biased toward the generated data.
    held_out_share: float = 0.0

    def add_example(self, example: PromptExample, *, seed: bool, key: float | None = None) -> None:
        """`key`: the task's stored `holdout_key` where the caller read it (computed otherwise)."""
        if self.held_out_share > 0 and self.held_out(example, key):
            return
        (self.seeds if seed else self.machine).append(example)
        own = self.by_language.setdefault(example.language, ([], []))
        (own[0] if seed else own[1]).append(example)

    def held_out(self, example: PromptExample, key: float | None = None) -> bool:
        """Whether the task is on the held-out side; without a stored key, the key is made from
        what a prompt example keeps (the instruction and the first instance's input are what it
        is made of)."""
        if key is None:
            key = holdout_key(example.instruction, [{"input": example.input}])
        return split_of(key, self.held_out_share) == "held_out"

    def forget(self, example_ids: set[str]) -> None:
        """Take examples out, seeds too (tasks another writer changed or withdrew): one pass
        over each list, however many go."""
        if not example_ids:
            return
        by_language = [kind for pair in self.by_language.values() for kind in pair]
        for examples in [self.seeds, self.machine, *by_language]:
            examples[:] = [e for e in examples if e.id not in example_ids]

    def drop_machine(self, example_id: str) -> None:
        """Take a generated example out again (rare: a demotion)."""
        self.machine[:] = [e for e in self.machine if e.id != example_id]
        for _, machine in self.by_language.values():
            machine[:] = [e for e in machine if e.id != example_id]


@dataclass(frozen=True)
class PromptJob:
    """One completion request and what is needed to read and trace its answer."""

    text: str
    stop: tuple[str, ...]
    kind: str  # "bootstrap" | "alpaca"
    example_ids: tuple[str, ...]
    template_version: str
    next_number: int
    numbering: str = "{n}."
    stop_at: int | None = None
    lead: str = ""  # the start of the next item, written in the prompt


@dataclass
class Candidate:
    instruction: str
    lineage: dict[str, Any]
    instances: list[dict[str, str]] | None = None  # alpaca and backtranslated tasks bring one
    language: str = "unknown"  # detected at screening
    origin: str = TaskOrigin.generated.value
    parent: str | None = None  # the instruction an evolved task was rewritten from


@dataclass(frozen=True)
class PassageRef:
    """A passage of a document, as a backtranslate run uses it."""

    id: int
    document_id: int
    text: str
    language: str


def _examples(
    pool: Pool, topic: str | None, per_prompt: int, language: str | None = None
) -> tuple[Sequence[PromptExample], Sequence[PromptExample]]:
    """Seeds and machine tasks to sample from: of `language` when the pool holds that language
    (all of them otherwise, shown as they are); with a topic, only those nearest to it."""
    if language is not None and pool.by_language.get(language, ([], []))[0]:
        seeds, machine = pool.by_language[language]
        pool = Pool(seeds=seeds, machine=machine, index=pool.index)
    if not topic:
        return pool.seeds, pool.machine
    k = max(TOPIC_NEIGHBOURS, 2 * per_prompt)
    near = {str(key) for key, score in pool.index.nearest(topic, k=k) if score > 0}
    seeds = [e for e in pool.seeds if e.id in near]
    machine = [e for e in pool.machine if e.id in near]
    # A topic that shares no words with the pool would leave nothing to show: use everything.
    return (seeds or pool.seeds), (machine if seeds else pool.machine)


def prompt_jobs(
    *,
    pool: Pool,
    params: RunCreate,
    language: str,
    rng: random.Random,
    n: int | None = None,
    examples_language: str | None = None,
) -> list[PromptJob]:
    """`n` prompts (default: `prompts_per_batch`) worded in `language`, each with examples drawn
    from the pool as it stands now (of `examples_language` where the pool holds it)."""
    seeds, machine = _examples(
        pool, params.topic, params.prompt.examples_per_prompt, examples_language
    )
    jobs = []
    for _ in range(params.prompt.prompts_per_batch if n is None else n):
        if params.strategy == "alpaca":
            chosen = sample_prompt_examples(
                [s for s in seeds if s.output],
                _with_output(machine, rng),
                n_total=3,
                n_machine=1,
                rng=rng,
            )
            alpaca = build_alpaca_prompt(
                chosen, num_tasks=params.alpaca_tasks + len(chosen), language=language
            )
            jobs.append(
                PromptJob(
                    text=alpaca.text,
                    stop=alpaca.stop_sequences,
                    kind="alpaca",
                    example_ids=alpaca.example_ids,
                    template_version=alpaca.template_version,
                    next_number=alpaca.next_number,
                )
            )
            continue
        chosen = sample_prompt_examples(
            seeds,
            machine,
            n_total=params.prompt.examples_per_prompt,
            n_machine=params.prompt.machine_examples,
            rng=rng,
        )
        # Examples in other languages only (a run asking for a language the pool lacks):
        # the prompt says which language to write in and starts the next item in it.
        foreign = bool(chosen) and all(
            e.language and e.language != language for e in map(as_example, chosen)
        )
        boot = build_bootstrap_prompt(
            chosen,
            language=language,
            header=params.prompt.header,
            numbering=params.prompt.numbering,
            stop_at=params.prompt.stop_at,
            foreign_examples=foreign and examples_language == language,
        )
        jobs.append(
            PromptJob(
                text=boot.text,
                stop=boot.stop_sequences,
                kind="bootstrap",
                example_ids=boot.example_ids,
                template_version=boot.template_version,
                next_number=boot.next_number,
                numbering=boot.numbering,
                stop_at=boot.stop_at,
                lead=boot.lead,
            )
        )
    return jobs


def _with_output(examples: Sequence[PromptExample], rng: random.Random) -> list[PromptExample]:
    """Examples that show an output: all of a small pool; a random few of a large one, where
    scanning every task for each prompt would cost more than the prompt."""
    if len(examples) <= 5000:
        return [e for e in examples if e.output]
    picked = {rng.randrange(len(examples)) for _ in range(32)}
    return [examples[i] for i in sorted(picked) if examples[i].output]


def candidates_from(
    job: PromptJob, generation: Generation, lineage: dict[str, Any]
) -> list[Candidate]:
    """Parse one completion into candidates, each carrying the lineage of its prompt."""
    base = {
        **lineage,
        "example_task_ids": list(job.example_ids),
        "template_version": job.template_version,
        "request_id": generation.request_id,
        "finish_reason": generation.finish_reason,
    }
    if job.kind == "alpaca":
        tasks = parse_alpaca_completion(generation.text, finish_reason=generation.finish_reason)
        return [
            Candidate(
                instruction=t["instruction"],
                lineage=base,
                instances=[{"input": t["input"], "output": t["output"]}],
            )
            for t in tasks
        ]
    items = parse_bootstrap_completion(
        job.lead + generation.text,
        next_number=job.next_number,
        finish_reason=generation.finish_reason,
        numbering=job.numbering,
        stop_at=job.stop_at,
    )
    return [Candidate(instruction=text, lineage=base) for text in items]


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
                    "template_version": "template-v1",
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


# --- evolve ------------------------------------------------------------------------------------

PARENT_DRAWS = 20  # tries to find a parent below the depth limit before giving up on a prompt


@dataclass(frozen=True)
class Evolution:
    """One evolve prompt: the parent task, the operation and the prompt that asks for it."""

    parent: PromptExample
    operation: str
    depth: int  # of the task this prompt asks for: the parent's + 1
    prompt: TaskPrompt


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
    seeds, machine = _examples(pool, topic, 1, language)
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


# --- backtranslate -----------------------------------------------------------------------------


def backtranslate_prompt(passage: PassageRef, wording: str) -> TaskPrompt:
    return build_backtranslate_prompt(passage.text, language=wording)


def backtranslated_candidate(
    passage: PassageRef, prompt: TaskPrompt, generation: Generation, lineage: dict[str, Any]
) -> Candidate | None:
    """The passage is the output; the model wrote the instruction (and input) it answers."""
    found = parse_backtranslation(generation.text, finish_reason=generation.finish_reason)
    if found is None:
        return None
    instruction, task_input = found
    return Candidate(
        instruction=instruction,
        instances=[{"input": task_input, "output": passage.text}],
        origin=TaskOrigin.backtranslated.value,
        lineage={
            **lineage,
            "document_id": passage.document_id,
            "passage_id": passage.id,
            "template_version": prompt.template_version,
            "request_id": generation.request_id,
            "finish_reason": generation.finish_reason,
        },
    )


# --- magpie ------------------------------------------------------------------------------------

MAGPIE_TEMPLATE_VERSION = "magpie-v1"


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
            "template_version": MAGPIE_TEMPLATE_VERSION,
            "request_id": generation.request_id,
            "finish_reason": generation.finish_reason,
        },
    )
