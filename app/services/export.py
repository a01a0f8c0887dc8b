"""JSONL and Parquet exports, streamed from a server-side cursor so memory stays flat at any
row count."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from app.models import (
    MACHINE_ORIGINS,
    Dataset,
    DatasetVersionChunk,
    Task,
    TaskOrigin,
    TaskStatus,
)
from app.schemas.datasets import ExportFormat, ExportSplit
from app.services.frozen import decode_chunk
from app.services.heldout import split_clause
from app.services.ratings import min_rating_clause
from training.data import task_to_messages

ROWS_PER_FETCH = 2000
# Parquet row groups: a few thousand rows keep the writer's buffer to a few MB while staying large
# enough for readers (and the Hub's viewer) to scan efficiently.
ROWS_PER_GROUP = 5000


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
    origin: str
    language: str | None
    holdout_key: float | None = None


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


@dataclass(frozen=True)
class Selection:
    """Which accepted tasks an export holds: seeds only when asked for, one side of the held-out
    share or both, contaminated tasks only when asked for, and a judge rating floor."""

    include_seeds: bool = False
    split: ExportSplit = ExportSplit.all
    include_contaminated: bool = False
    min_rating: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """As a version records it (app/services/versions.py)."""
        return {
            "include_seeds": self.include_seeds,
            "split": self.split.value,
            "include_contaminated": self.include_contaminated,
            "min_rating": self.min_rating,
        }


@dataclass(frozen=True)
class VersionPart:
    """Instead of a selection from the live pool: a dataset version's frozen tasks, all of them
    or one side of the held-out split as it stood when the version was made."""

    version_id: int
    split: ExportSplit = ExportSplit.all


def selection_clauses(
    *, dataset_id: int, selection: Selection, held_out_share: float
) -> list[sa.ColumnElement[bool]]:
    """The SQL of a selection: what exports, versions and fine-tunes mean by it."""
    # Plain strings: the raw DBAPI cursor below binds them without SQLAlchemy's type handling.
    origins = list(MACHINE_ORIGINS)
    if selection.include_seeds:
        origins.append(TaskOrigin.seed.value)
    return [
        col(Task.dataset_id) == dataset_id,
        col(Task.status) == TaskStatus.accepted.value,
        col(Task.origin).in_(origins),
        split_clause(selection.split, held_out_share),
        sa.true() if selection.include_contaminated else sa.not_(col(Task.contaminated)),
        # Only tasks rated this or better by their latest judgement.
        *min_rating_clause(selection.min_rating),
    ]


def export_query(
    *, dataset_id: int, selection: Selection, held_out_share: float = 0.0
) -> sa.Select:  # type: ignore[type-arg]
    """The selected tasks of a dataset, oldest first."""
    return (
        sa.select(
            col(Task.id),
            col(Task.seed_id),
            col(Task.name),
            col(Task.instruction),
            # Raw JSON text: decoding it ourselves with orjson is several times faster.
            sa.cast(col(Task.instances), sa.Text).label("instances"),
            col(Task.is_classification),
            col(Task.origin),
            col(Task.language),
            col(Task.holdout_key),
        )
        .where(
            *selection_clauses(
                dataset_id=dataset_id, selection=selection, held_out_share=held_out_share
            )
        )
        .order_by(col(Task.id))
    )


def row_batches(conn: Connection, query: sa.Select) -> Iterator[list[Any]]:  # type: ignore[type-arg]
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


def held_out_share_of(engine: Engine, dataset_id: int) -> float:
    with engine.connect() as conn:
        share = conn.execute(
            sa.select(col(Dataset.held_out_share)).where(col(Dataset.id) == dataset_id)
        ).scalar()
    return float(share or 0.0)


def version_batches(*, engine: Engine, part: VersionPart) -> Iterator[list[ExportRow]]:
    """A version's frozen tasks, one stored chunk at a time, exactly as they were frozen."""
    query = (
        sa.select(col(DatasetVersionChunk.data), col(DatasetVersionChunk.raw_bytes))
        .where(col(DatasetVersionChunk.version_id) == part.version_id)
        .order_by(col(DatasetVersionChunk.position))
    )
    with engine.connect() as conn:
        for data, raw_bytes in conn.execute(query).yield_per(8):
            rows = [
                ExportRow(*(record[key] for key in ExportRow._fields))
                for record in decode_chunk(bytes(data), raw_bytes)
                if part.split == ExportSplit.all or record["split"] == part.split.value
            ]
            if rows:
                yield rows


def task_batches(
    *, engine: Engine, dataset_id: int, selection: Selection | VersionPart
) -> Iterator[list[ExportRow]]:
    """Exported tasks in batches; owns its connection because it outlives the request's session.
    The writes keep contamination marks current (decontamination.py); nothing is written here."""
    if isinstance(selection, VersionPart):
        yield from version_batches(engine=engine, part=selection)
        return
    share = held_out_share_of(engine, dataset_id)
    query = export_query(dataset_id=dataset_id, selection=selection, held_out_share=share)
    loads = orjson.loads
    with engine.connect() as conn:
        for rows in row_batches(conn, query):
            yield [
                ExportRow(task_id, seed_id, name, instruction, loads(raw) if raw else [], *rest)
                for task_id, seed_id, name, instruction, raw, *rest in rows
            ]


JSONL_MEDIA_TYPE = "application/x-ndjson"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"  # registered with IANA in 2024


def export_file(*, dataset_name: str, fmt: ExportFormat) -> tuple[str, str]:
    """The media type and download file name of an export."""
    if fmt == ExportFormat.parquet:
        return PARQUET_MEDIA_TYPE, f"{dataset_name}.parquet"
    return JSONL_MEDIA_TYPE, f"{dataset_name}-{fmt.value}.jsonl"


def export_chunks(
    *, engine: Engine, dataset_id: int, fmt: ExportFormat, selection: Selection | VersionPart
) -> Iterator[bytes]:
    """Yield the export in chunks: JSONL lines in the chosen shape, or a Parquet file."""
    if fmt == ExportFormat.parquet:
        yield from parquet_chunks(engine=engine, dataset_id=dataset_id, selection=selection)
        return
    formatter, dumps = FORMATTERS[fmt], orjson.dumps
    for tasks in task_batches(engine=engine, dataset_id=dataset_id, selection=selection):
        lines = [dumps(obj) for task in tasks for obj in formatter(task)]
        if lines:
            lines.append(b"")
            yield b"\n".join(lines)


# --- flat rows: the Parquet export and the bundle's splits ---

# One row per instance, like alpaca, plus what a user filters or stratifies on. `id` is the
# self_instruct export's id, so a row can be traced back to its task.
FLAT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=False),
        pa.field("is_classification", pa.bool_(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("language", pa.string()),  # detected code (en, zh, ...); null if never detected
    ]
)


class FlatColumns:
    """Flat rows gathered column by column, the layout Arrow builds its arrays from cheaply."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in FLAT_SCHEMA.names}
        self.rows = 0

    def add(self, task: ExportRow) -> None:
        cols = self.columns
        task_id = task.seed_id or f"task_{task.task_id}"
        for inst in task.instances:
            cols["id"].append(task_id)
            cols["instruction"].append(task.instruction)
            cols["input"].append(inst["input"])
            cols["output"].append(inst["output"])
            cols["is_classification"].append(bool(task.is_classification))
            cols["origin"].append(task.origin)
            cols["language"].append(task.language)
        self.rows += len(task.instances)

    def take(self) -> pa.RecordBatch:
        """The gathered rows as one batch; the buffer starts empty again."""
        batch = pa.record_batch(
            [pa.array(self.columns[f.name], f.type) for f in FLAT_SCHEMA], schema=FLAT_SCHEMA
        )
        self._reset()
        return batch

    def as_dicts(self) -> list[dict[str, Any]]:
        """The gathered rows as JSON objects (the bundle's JSONL splits); the buffer empties."""
        cols, names = self.columns, FLAT_SCHEMA.names
        rows = [
            dict(zip(names, values, strict=True)) for values in zip(*cols.values(), strict=True)
        ]
        self._reset()
        return rows


class ByteSink:
    """A write-only file that keeps what was written until drained, so a Parquet (or zip) writer
    can feed a streaming response instead of a whole file in memory."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def parquet_chunks(
    *, engine: Engine, dataset_id: int, selection: Selection | VersionPart
) -> Iterator[bytes]:
    """Yield a Parquet file of flat rows, one row group per ROWS_PER_GROUP rows as they are read.

    An empty dataset gives a valid file with the schema and no rows.
    """
    sink = ByteSink()
    buffer = FlatColumns()
    with pq.ParquetWriter(sink, FLAT_SCHEMA) as writer:
        for tasks in task_batches(engine=engine, dataset_id=dataset_id, selection=selection):
            for task in tasks:
                buffer.add(task)
            if buffer.rows >= ROWS_PER_GROUP:
                writer.write_batch(buffer.take())
                yield sink.drain()
        if buffer.rows:
            writer.write_batch(buffer.take())
    yield sink.drain()  # the footer, written on close
