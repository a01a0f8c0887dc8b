"""Reading the pool from the database: the dataset's accepted tasks as prompt examples and
novelty-index entries. What a strategy loads for itself (evolve's depths, backtranslate's
passages) lives with the strategy."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.models import Dataset, Task, TaskOrigin, TaskStatus
from app.strategies import Pool
from filters.language import UNKNOWN
from generators.prompts import PromptExample


def example_of(
    task_id: object, instruction: str, instances: list[dict[str, str]], language: str
) -> PromptExample:
    """A task as a prompt shows it: the instruction and its first instance."""
    first = instances[0] if instances else {}
    return PromptExample(
        id=str(task_id),
        instruction=instruction,
        input=first.get("input", ""),
        output=first.get("output", ""),
        language=language,
    )


def load_pool(
    engine: Engine, *, dataset_id: int, held_out_share: float = 0.0
) -> tuple[Pool, list[tuple[int, str]], datetime]:
    """The dataset's accepted tasks, their ids and instructions in id order, and the dataset's
    change clock read before them (a change the rows miss is newer, so the first commit finds
    it); held-out tasks are in the novelty index only (Pool.held_out_share)."""
    pool = Pool(held_out_share=held_out_share)
    texts: list[tuple[int, str]] = []
    with Session(engine) as session:
        clock = session.exec(select(Dataset.updated_at).where(Dataset.id == dataset_id)).one()
        rows = session.exec(
            select(  # type: ignore[call-overload]
                Task.id,
                Task.instruction,
                Task.instances,
                Task.origin,
                Task.language,
                Task.holdout_key,
            )
            .where(Task.dataset_id == dataset_id, Task.status == TaskStatus.accepted.value)
            .order_by(col(Task.id))
        )
        for task_id, instruction, instances, origin, language, key in rows:
            example = example_of(task_id, instruction, list(instances), language or UNKNOWN)
            pool.add_example(example, seed=origin == TaskOrigin.seed.value, key=key)
            texts.append((task_id or 0, instruction))
    # One bulk build: adding 1M tasks one by one took three times as long.
    pool.index.add_many(texts)
    return pool, texts, clock
