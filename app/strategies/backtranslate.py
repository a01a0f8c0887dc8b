"""backtranslate (Li et al. 2023's instruction back-translation): each prompt shows a passage of
the dataset's documents and asks which instruction it answers; the passage is the output. Each
passage is owed `uses_per_passage` prompts; the run ends `passages_used` when none is left."""

from __future__ import annotations

import collections
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.errors import InvalidInput
from app.models import Dataset, Document, Passage, Task, TaskOrigin
from app.schemas.common import ErrorItem
from app.strategies.base import (
    Candidate,
    RunCreate,
    RunView,
    Strategy,
    StrictSpec,
    request_seed,
    setting_of,
)
from generators.base import Generation
from generators.parsing import parse_backtranslation
from generators.prompts import (
    BACKTRANSLATE_SAMPLING,
    LANGUAGES,
    TaskPrompt,
    build_backtranslate_prompt,
    strategy_wording,
)

if TYPE_CHECKING:
    from collections.abc import Iterable


PASSAGE_ATTEMPTS = 3  # failed requests after which a passage is given up for this run


class BacktranslateSpec(StrictSpec):
    """Instruction back-translation: each prompt asks what a passage of a document answers."""

    documents: list[int] | None = Field(
        None, max_length=1000, description="Document ids to use; default all of the dataset's."
    )
    uses_per_passage: int = Field(
        1, ge=1, le=20, description="Prompts per passage in this run (sampled answers differ)."
    )


@dataclass(frozen=True)
class PassageRef:
    """A passage of a document, as a backtranslate run uses it."""

    id: int
    document_id: int
    text: str
    language: str


class BacktranslateFields(StrictSpec):
    backtranslate: BacktranslateSpec = Field(default_factory=BacktranslateSpec)


class Backtranslate(Strategy):
    name = "backtranslate"
    summary = "instructions for your documents' passages"
    fields = BacktranslateFields
    uses_topic = False  # it shows passages, not pool tasks
    needs = ("documents",)
    shardable = False  # each passage is used once, from one queue

    @classmethod
    def check_dataset(cls, *, session: Session, dataset: Dataset, params: RunCreate) -> None:
        spec: BacktranslateSpec = setting_of(params, "backtranslate")
        check_documents(session=session, dataset=dataset, document_ids=spec.documents)

    def __init__(self, ctx: RunView) -> None:
        super().__init__(ctx)
        spec: BacktranslateSpec = self.setting("backtranslate")
        self.passages = passage_queue(ctx.engine, ctx.run_id, ctx.dataset_id, spec)
        self.failures: Counter[int] = Counter()  # failed requests per passage

    def task_languages(self) -> Iterable[str]:
        # A passage in another language writes tasks in it: the pool takes them.
        return [passage.language for passage in self.passages]

    def echo_wording(self) -> Iterable[str]:
        return [w for code in LANGUAGES for w in strategy_wording(code)]

    async def generate(self, rng: random.Random) -> list[Candidate] | None:
        ctx = self.ctx
        if not self.passages:  # the driver sends no prompt then; a requeued passage may come back
            return []
        passage = self.passages.popleft()
        wording = ctx.prompt_language(passage.language)
        prompt = build_backtranslate_prompt(passage.text, language=wording)
        sampling = {**BACKTRANSLATE_SAMPLING.as_dict(), "seed": request_seed(rng)}
        gen = await ctx.complete(prompt.text, sampling, prompt.stop_sequences, language=wording)
        if gen is None:
            self.failures[passage.id] += 1
            if self.failures[passage.id] < PASSAGE_ATTEMPTS:
                self.passages.append(passage)  # still owed: tried again after the others
            else:
                ctx.last_error = (
                    f"passage {passage.id} given up after {PASSAGE_ATTEMPTS} failed requests"
                )
            return None
        return self.answered(backtranslated_candidate(passage, prompt, gen, ctx.lineage), gen.text)

    def can_prompt(self, *, launching: int, candidates: int) -> bool:
        return len(self.passages) > launching  # each prompt launched and not sent takes one

    def exhausted(self) -> str | None:
        # Used up only when none waits: one whose request failed goes back in the queue.
        return None if self.passages else "passages_used"


def check_documents(*, session: Session, dataset: Dataset, document_ids: list[int] | None) -> None:
    """A backtranslate run needs passages, from documents of its own dataset."""
    query = select(Passage.id).where(Passage.dataset_id == dataset.id)
    if document_ids is not None:
        found = set(
            session.exec(
                select(Document.id).where(
                    Document.dataset_id == dataset.id, col(Document.id).in_(document_ids)
                )
            ).all()
        )
        missing = sorted(set(document_ids) - found)
        if missing:
            raise InvalidInput(
                f"backtranslate.documents: dataset '{dataset.name}' has no document {missing[0]}"
                "; GET /v1/datasets/{name}/documents lists them.",
                errors=[ErrorItem(field="backtranslate.documents", reason="unknown document")],
            )
        query = query.where(col(Passage.document_id).in_(document_ids))
    if session.exec(query.limit(1)).first() is None:
        raise InvalidInput(
            f"strategy 'backtranslate' needs documents: post some to "
            f"/v1/datasets/{dataset.name}/documents first.",
            errors=[ErrorItem(field="strategy", reason="the dataset has no documents")],
        )


def passage_queue(
    engine: Engine, run_id: int, dataset_id: int, spec: BacktranslateSpec
) -> collections.deque[PassageRef]:
    """The passages this run still owes prompts: each `uses_per_passage` times, round by round
    (every passage once before any twice), less those its tasks already came from (a resume)."""
    with Session(engine) as session:
        query = select(Passage).where(Passage.dataset_id == dataset_id)
        if spec.documents is not None:
            query = query.where(col(Passage.document_id).in_(spec.documents))
        passages = [
            PassageRef(id=p.id, document_id=p.document_id, text=p.text, language=p.language)  # type: ignore[arg-type]
            for p in session.exec(query.order_by(col(Passage.id)))
        ]
        used = Counter(
            lineage.get("passage_id")
            for lineage in session.exec(
                select(Task.lineage).where(
                    Task.run_id == run_id, Task.origin == TaskOrigin.backtranslated.value
                )
            )
        )
    queue: collections.deque[PassageRef] = collections.deque()
    for round_ in range(spec.uses_per_passage):
        queue.extend(p for p in passages if used.get(p.id, 0) <= round_)
    return queue


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
