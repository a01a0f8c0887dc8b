"""JSONL export, streamed from a server-side cursor so memory stays flat at any row count."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from app.models import Task, TaskOrigin, TaskStatus
from app.schemas import ExportFormat

ROWS_PER_FETCH = 2000
LINES_PER_CHUNK = 1000

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _user_text(instruction: str, task_input: str) -> str:
    return f"{instruction}\n\n{task_input}" if task_input.strip() else instruction


def _self_instruct(row: Any) -> Iterator[dict[str, Any]]:
    yield {
        "id": row.seed_id or f"task_{row.id}",
        "name": row.name or "",
        "instruction": row.instruction,
        "instances": row.instances or [],
        "is_classification": bool(row.is_classification),
    }


def _alpaca(row: Any) -> Iterator[dict[str, Any]]:
    for inst in row.instances or []:
        yield {"instruction": row.instruction, "input": inst["input"], "output": inst["output"]}


def _messages(row: Any) -> Iterator[dict[str, Any]]:
    for inst in row.instances or []:
        yield {
            "messages": [
                {"role": "user", "content": _user_text(row.instruction, inst["input"])},
                {"role": "assistant", "content": inst["output"]},
            ]
        }


def _prompt_completion(row: Any) -> Iterator[dict[str, Any]]:
    for inst in row.instances or []:
        yield {"prompt": _user_text(row.instruction, inst["input"]), "completion": inst["output"]}


FORMATTERS: dict[ExportFormat, Callable[[Any], Iterator[dict[str, Any]]]] = {
    ExportFormat.self_instruct: _self_instruct,
    ExportFormat.alpaca: _alpaca,
    ExportFormat.openai_messages: _messages,
    ExportFormat.prompt_completion: _prompt_completion,
}


def export_query(*, dataset_id: int, include_seeds: bool) -> sa.Select:  # type: ignore[type-arg]
    """Accepted tasks of a dataset, oldest first; seeds only when asked for."""
    origins = [TaskOrigin.generated, TaskOrigin.edited]
    if include_seeds:
        origins.append(TaskOrigin.seed)
    return (
        sa.select(
            col(Task.id),
            col(Task.seed_id),
            col(Task.name),
            col(Task.instruction),
            col(Task.instances),
            col(Task.is_classification),
        )
        .where(
            col(Task.dataset_id) == dataset_id,
            col(Task.status) == TaskStatus.accepted,
            col(Task.origin).in_(origins),
        )
        .order_by(col(Task.id))
    )


def export_chunks(
    *, engine: Engine, dataset_id: int, fmt: ExportFormat, include_seeds: bool
) -> Iterator[bytes]:
    """Yield JSONL in chunks; owns its connection because it outlives the request's session."""
    formatter = FORMATTERS[fmt]
    query = export_query(dataset_id=dataset_id, include_seeds=include_seeds)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=ROWS_PER_FETCH).execute(
            query
        )
        lines: list[str] = []
        for row in result:
            for obj in formatter(row):
                lines.append(_dumps(obj))
            if len(lines) >= LINES_PER_CHUNK:
                yield ("\n".join(lines) + "\n").encode()
                lines = []
        if lines:
            yield ("\n".join(lines) + "\n").encode()
