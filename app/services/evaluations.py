"""Evaluation: ROUGE-L of a model's answers against held-out reference outputs, the metric the
Self-Instruct paper reports, for several models on the same tasks in one request."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.errors import InvalidInput
from app.llm import backend_for, find_model
from app.models import Dataset, Task, TaskStatus
from app.schemas import Evaluation, EvaluationCreate, ModelScore, Sample
from app.settings import Settings
from filters.rouge import rouge_l
from generators.base import Generation, SamplingParams
from training.data import task_to_messages


def _held_out(session: Session, dataset: Dataset, body: EvaluationCreate) -> list[Sample]:
    query = select(Task).where(
        Task.dataset_id == dataset.id, Task.status == TaskStatus.accepted.value
    )
    if body.task_ids is not None:
        query = query.where(col(Task.id).in_(body.task_ids))
    if body.origin is not None:
        query = query.where(Task.origin == body.origin)
    samples = []
    for task in session.exec(query.order_by(col(Task.id))):
        for inst in task.instances[:1]:  # one reference per task keeps tasks equally weighted
            assert task.id is not None
            samples.append(
                Sample(
                    task_id=task.id,
                    instruction=task.instruction,
                    input=inst["input"],
                    reference=inst["output"],
                    outputs={},
                )
            )
        if len(samples) >= body.limit:
            break
    if not samples:
        raise InvalidInput(
            f"Dataset '{dataset.name}' has no accepted tasks with instances to "
            "evaluate on; pick another dataset or loosen task_ids/origin."
        )
    return samples


async def evaluate(
    *, engine: Engine, settings: Settings, dataset: Dataset, body: EvaluationCreate
) -> Evaluation:
    entries = [  # 404 before any work
        find_model(settings, m, engine, field=f"models.{i}") for i, m in enumerate(body.models)
    ]
    with Session(engine) as session:
        samples = _held_out(session, dataset, body)
    params = SamplingParams(max_tokens=body.max_tokens, temperature=0.0)
    prompts: list[Any] = [task_to_messages(s.instruction, s.input) for s in samples]
    results = []
    for entry in entries:
        answers = await backend_for(settings, entry).generate(
            prompts, params, return_exceptions=True
        )
        scores, failed = [], 0
        for sample, answer in zip(samples, answers, strict=True):
            text = answer.text if isinstance(answer, Generation) else ""
            failed += not isinstance(answer, Generation)
            sample.outputs[entry.id] = text
            scores.append(rouge_l(text, sample.reference))
        results.append(
            ModelScore(
                model=entry.id, mean_rouge_l=sum(scores) / len(scores), scores=scores, failed=failed
            )
        )
    return Evaluation(dataset=dataset.name, tasks=len(samples), results=results, samples=samples)
