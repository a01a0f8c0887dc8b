"""JSONL export, streamed from a server-side cursor so memory stays flat at any row count."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from app.models import MACHINE_ORIGINS, Task, TaskOrigin, TaskStatus
from app.schemas import ExportFormat
from training.data import task_to_messages

ROWS_PER_FETCH = 2000


def _user_text(instruction: str, task_input: str) -> str:
    """The user turn exactly as fine-tuning and evaluation build it."""
    return str(task_to_messages(instruction, task_input)[0]["content"])


class ExportRow(NamedTuple):
    task_id: int
    seed_id: str | None
    name: str | None
    instruction: str
    instances: list[dict[str, str]]
    is_classification: bool | None


# Formatters return every line's object for one task: one for the seed format, one per instance
# for the others.
Formatter = Callable[[ExportRow], list[dict[str, Any]]]


def _self_instruct(row: ExportRow) -> list[dict[str, Any]]:
    return [
        {
            "id": row.seed_id or f"task_{row.task_id}",
            "name": row.name or "",
            "instruction": row.instruction,
            "instances": row.instances,
            "is_classification": bool(row.is_classification),
        }
    ]


def _alpaca(row: ExportRow) -> list[dict[str, Any]]:
    return [
        {"instruction": row.instruction, "input": inst["input"], "output": inst["output"]}
        for inst in row.instances
    ]


def _messages(row: ExportRow) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": _user_text(row.instruction, inst["input"])},
                {"role": "assistant", "content": inst["output"]},
            ]
        }
        for inst in row.instances
    ]


def _prompt_completion(row: ExportRow) -> list[dict[str, Any]]:
    return [
        {"prompt": _user_text(row.instruction, inst["input"]), "completion": inst["output"]}
        for inst in row.instances
    ]


FORMATTERS: dict[ExportFormat, Formatter] = {
    ExportFormat.self_instruct: _self_instruct,
    ExportFormat.alpaca: _alpaca,
    ExportFormat.openai_messages: _messages,
    ExportFormat.prompt_completion: _prompt_completion,
}


def export_query(*, dataset_id: int, include_seeds: bool) -> sa.Select:  # type: ignore[type-arg]
    """Accepted tasks of a dataset, oldest first; seeds only when asked for."""
    # Plain strings: the raw DBAPI cursor below binds them without SQLAlchemy's type handling.
    origins = list(MACHINE_ORIGINS)
    if include_seeds:
        origins.append(TaskOrigin.seed.value)
    return (
        sa.select(
            col(Task.id),
            col(Task.seed_id),
            col(Task.name),
            col(Task.instruction),
            # Raw JSON text: decoding it ourselves with orjson is several times faster.
            sa.cast(col(Task.instances), sa.Text).label("instances"),
            col(Task.is_classification),
        )
        .where(
            col(Task.dataset_id) == dataset_id,
            col(Task.status) == TaskStatus.accepted.value,
            col(Task.origin).in_(origins),
        )
        .order_by(col(Task.id))
    )


def _row_batches(conn: Connection, query: sa.Select) -> Iterator[list[Any]]:  # type: ignore[type-arg]
    """Plain DBAPI tuples in batches: SQLAlchemy's per-row result processing halves throughput.

    PostgreSQL gets a named (server-side) cursor so the server, not this process, holds the rows.
    """
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    dbapi_conn: Any = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        cursor = dbapi_conn.cursor(name="selfinstruct_export")
        params: Any = compiled.params
    else:
        cursor = dbapi_conn.cursor()
        params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    try:
        cursor.execute(str(compiled), params)
        while batch := cursor.fetchmany(ROWS_PER_FETCH):
            yield batch
    finally:
        cursor.close()


def export_chunks(
    *, engine: Engine, dataset_id: int, fmt: ExportFormat, include_seeds: bool
) -> Iterator[bytes]:
    """Yield JSONL in chunks; owns its connection because it outlives the request's session."""
    formatter = FORMATTERS[fmt]
    query = export_query(dataset_id=dataset_id, include_seeds=include_seeds)
    dumps, loads = orjson.dumps, orjson.loads
    with engine.connect() as conn:
        for rows in _row_batches(conn, query):
            lines = [
                dumps(obj)
                for task_id, seed_id, name, instruction, raw, is_cls in rows
                for obj in formatter(
                    ExportRow(
                        task_id, seed_id, name, instruction, loads(raw) if raw else [], is_cls
                    )
                )
            ]
            if lines:
                lines.append(b"")
                yield b"\n".join(lines)
