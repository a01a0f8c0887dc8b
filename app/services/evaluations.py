"""Evaluation: ROUGE-L of a model's answers against held-out reference outputs, the metric the
Self-Instruct paper reports, for several models on the same tasks in one request."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.errors import InvalidInput
from app.llm import backend_for, find_model
from app.models import Dataset, Task, TaskOrigin, TaskStatus
from app.settings import Settings
from filters.rouge import rouge_l
from generators.base import Generation, SamplingParams
from training.data import task_to_messages


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1, max_length=4, description="E.g. a base and its tune.")
    dataset: str = Field(description="Held-out tasks: a dataset the models were not trained on.")
    # 2**53 - 1: the largest integer a JSON number carries exactly (ids never come near it)
    task_ids: list[Annotated[int, Field(ge=1, le=2**53 - 1)]] | None = Field(
        None, max_length=1000, description="Only these tasks."
    )
    origin: TaskOrigin | None = None
    limit: int = Field(20, ge=1, le=500, description="Tasks to evaluate, oldest first.")
    max_tokens: int = Field(128, ge=1, le=4096)


class ModelScore(BaseModel):
    model: str
    mean_rouge_l: float
    scores: list[float]
    failed: int = Field(description="Tasks the model gave no answer for (scored 0).")


class Sample(BaseModel):
    task_id: int
    instruction: str
    input: str
    reference: str
    outputs: dict[str, str]


class Evaluation(BaseModel):
    object: Literal["evaluation"] = "evaluation"
    metric: Literal["rougeL_f1"] = "rougeL_f1"
    dataset: str
    tasks: int
    results: list[ModelScore]
    samples: list[Sample]


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
