"""The pool as strategies see it: the dataset's accepted tasks to draw prompt examples (or
parents) from, by language and, with a `topic`, nearest to it. The stream fills and grows it."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from app.models import holdout_key
from app.services.heldout import split_of
from filters.novelty import NoveltyIndex
from generators.prompts import PromptExample

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

    def withdraw(self, keys: Iterable[Hashable]) -> list[Hashable]:
        """Take tasks out of the novelty index and the examples (another writer changed or
        withdrew them); returns the index keys that were in the index."""
        keys = set(keys)
        removed = [key for key in keys if key in self.index]
        for key in removed:
            self.index.remove(key)
        self.forget({str(key) for key in keys})
        return removed

    def copy(self) -> Pool:
        """A pool a run may change without touching this one (a worker's warm pool,
        app/pipeline/pool_cache.py): new lists of the same (immutable) examples, a copy of
        the index."""
        return Pool(
            seeds=list(self.seeds),
            machine=list(self.machine),
            index=self.index.copy(),
            by_language={
                language: (list(seeds), list(machine))
                for language, (seeds, machine) in self.by_language.items()
            },
            held_out_share=self.held_out_share,
        )

    def drop_machine(self, example_id: str) -> None:
        """Take a generated example out again (rare: a demotion)."""
        self.machine[:] = [e for e in self.machine if e.id != example_id]
        for _, machine in self.by_language.values():
            machine[:] = [e for e in machine if e.id != example_id]


def examples(
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
