"""Dataset bundles: train and validation splits plus a Hub dataset card, in the layout
`datasets.load_dataset(DIR)` and the Hugging Face Hub read with no arguments.

    README.md                               the card: YAML header (license, language, size,
                                            configs, features), then how the data was made
    data/train-00000-of-00001.parquet       (or .jsonl) flat rows, FLAT_SCHEMA
    data/validation-00000-of-00001.parquet

Rows are the Parquet export's (one per instance); a task's instances always share a split.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import orjson
import pyarrow.parquet as pq
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.models import Dataset
from app.schemas import BundleFileFormat
from app.services.dataset_card import SplitFacts, card_facts, card_text, service_version
from app.services.export import (
    FLAT_SCHEMA,
    ROWS_PER_GROUP,
    ByteSink,
    ExportRow,
    FlatColumns,
    task_batches,
)
from filters.language import UNKNOWN, base_language

Split = Literal["train", "validation"]
SPLITS: tuple[Split, ...] = ("train", "validation")

# --- the split rule (issue #13 replaces it with the dataset's held-out share) ---

VALIDATION_SHARE = 0.05
SPLIT_RULE = (
    f"a task is in `validation` when the first 8 bytes of the SHA-256 of its instruction (UTF-8), "
    f"read as a big-endian integer, fall in the lowest {VALIDATION_SHARE:.0%} of their range; "
    f"every instance of a task shares its split. When that leaves a split empty and there are at "
    f"least two tasks, the task nearest the boundary moves into it, because `datasets` cannot "
    f"load an empty split"
)


def split_key(task: ExportRow) -> float:
    """Where the task falls in [0, 1): from its instruction alone, so it never moves as the pool
    grows, and a task's instances (same instruction) never leak across splits."""
    digest = hashlib.sha256(task.instruction.encode()).digest()
    return int.from_bytes(digest[:8]) / 2**64


def split_of(task: ExportRow) -> Split:
    """The task's split: the one place issue #13 replaces with the dataset's held-out share."""
    return "validation" if split_key(task) < VALIDATION_SHARE else "train"


# --- writing the splits ---


def split_path(split: Split, file_format: BundleFileFormat) -> str:
    """The Hub's shard naming, so the files are recognised even without the card's `configs`."""
    return f"data/{split}-00000-of-00001.{file_format.value}"


class _SplitWriter(Protocol):
    def add(self, task: ExportRow) -> None: ...
    def close(self) -> None: ...


class _ParquetSplit:
    """One split's Parquet file, written a row group at a time."""

    def __init__(self, path: Path, rows_per_group: int) -> None:
        self._writer = pq.ParquetWriter(path, FLAT_SCHEMA)
        self._buffer = FlatColumns()
        self._rows_per_group = rows_per_group

    def add(self, task: ExportRow) -> None:
        self._buffer.add(task)
        if self._buffer.rows >= self._rows_per_group:
            self._writer.write_batch(self._buffer.take())

    def close(self) -> None:
        if self._buffer.rows:
            self._writer.write_batch(self._buffer.take())
        self._writer.close()  # an empty split still gets a valid file with the schema


class _JsonlSplit:
    """One split's JSONL file, the same flat rows as the Parquet one."""

    def __init__(self, path: Path, rows_per_group: int) -> None:
        self._fh = path.open("wb")
        self._buffer = FlatColumns()
        self._rows_per_group = rows_per_group

    def _flush(self) -> None:
        self._fh.writelines(orjson.dumps(row) + b"\n" for row in self._buffer.as_dicts())

    def add(self, task: ExportRow) -> None:
        self._buffer.add(task)
        if self._buffer.rows >= self._rows_per_group:
            self._flush()

    def close(self) -> None:
        self._flush()
        self._fh.close()


@dataclass
class BundleOptions:
    """What a user chooses for a bundle; the defaults need no decision from them."""

    file_format: BundleFileFormat = BundleFileFormat.parquet
    license: str = "other"  # we cannot know the seeds' or the model's terms; the user can
    include_seeds: bool = False  # like the JSONL export: the generated data only


@dataclass
class SplitCounts:
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    tasks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    languages: Counter[str] = field(default_factory=Counter)


@dataclass
class _Edge:
    """The task nearest the split boundary on each side, in case a split comes out empty."""

    lowest_train: tuple[float, int] = (2.0, 0)  # (key, task id)
    highest_validation: tuple[float, int] = (-1.0, 0)

    def see(self, task: ExportRow, split: Split) -> None:
        key = (split_key(task), task.task_id)
        if split == "train":
            self.lowest_train = min(self.lowest_train, key)
        else:
            self.highest_validation = max(self.highest_validation, key)

    def move(self, counts: SplitCounts) -> dict[int, Split]:
        """The one task to move so neither split is empty, if the rule left one empty."""
        if counts.tasks["validation"] == 0 and counts.tasks["train"] >= 2:
            return {self.lowest_train[1]: "validation"}
        if counts.tasks["train"] == 0 and counts.tasks["validation"] >= 2:
            return {self.highest_validation[1]: "train"}
        return {}


def _write_splits(
    *,
    engine: Engine,
    dataset_id: int,
    directory: Path,
    options: BundleOptions,
    moved: dict[int, Split],
) -> tuple[SplitCounts, _Edge]:
    (directory / "data").mkdir(parents=True, exist_ok=True)
    make = _ParquetSplit if options.file_format == BundleFileFormat.parquet else _JsonlSplit
    writers: dict[str, _SplitWriter] = {
        split: make(directory / split_path(split, options.file_format), ROWS_PER_GROUP)
        for split in SPLITS
    }
    counts, edge = SplitCounts(), _Edge()
    try:
        for tasks in task_batches(
            engine=engine, dataset_id=dataset_id, include_seeds=options.include_seeds
        ):
            for task in tasks:
                if not task.instances:
                    continue  # nothing to learn from; the flat export drops it too
                split = moved.get(task.task_id) or split_of(task)
                edge.see(task, split)
                writers[split].add(task)
                counts.rows[split] += len(task.instances)
                counts.tasks[split] += 1
                code = base_language(task.language)
                if code and code != UNKNOWN:
                    counts.languages[code] += 1
    finally:
        for writer in writers.values():
            writer.close()
    return counts, edge


def write_splits(
    *, engine: Engine, dataset_id: int, directory: Path, options: BundleOptions
) -> SplitCounts:
    """Both splits' files. A second pass, only when the rule left a split empty (a pool of a few
    dozen tasks), moves one task so `datasets.load_dataset` can load both."""
    counts, edge = _write_splits(
        engine=engine, dataset_id=dataset_id, directory=directory, options=options, moved={}
    )
    if moved := edge.move(counts):
        counts, _ = _write_splits(
            engine=engine, dataset_id=dataset_id, directory=directory, options=options, moved=moved
        )
    return counts


# --- the bundle ---


@dataclass
class BundleSummary:
    directory: Path
    files: list[str]
    counts: SplitCounts


def write_bundle(
    *, engine: Engine, dataset: Dataset, directory: Path, options: BundleOptions
) -> BundleSummary:
    """Write the splits, then the card (it states their counts), into `directory`."""
    assert dataset.id is not None
    counts = write_splits(
        engine=engine, dataset_id=dataset.id, directory=directory, options=options
    )
    splits = SplitFacts(
        rows=counts.rows,
        tasks=counts.tasks,
        paths={split: split_path(split, options.file_format) for split in SPLITS},
        languages=sorted(counts.languages),
        rule=SPLIT_RULE,
    )
    with Session(engine) as session:
        facts = card_facts(session=session, dataset=dataset)
    card = card_text(
        facts=facts, splits=splits, license=options.license, include_seeds=options.include_seeds
    )
    (directory / "README.md").write_text(card, encoding="utf-8")
    files = ["README.md", *(split_path(s, options.file_format) for s in SPLITS)]
    return BundleSummary(directory=directory, files=files, counts=counts)


ZIP_CHUNK = 1 << 20


def zip_chunks(summary: BundleSummary, *, root: str) -> Iterator[bytes]:
    """A zip of the bundle under `root/`, yielded as it is written (a MiB at a time)."""
    sink = ByteSink()
    stamp = datetime.now(UTC).timetuple()[:6]
    # A sink without seek makes zipfile write data descriptors instead of seeking back.
    with zipfile.ZipFile(sink, "w") as archive:  # type: ignore[arg-type]
        for name in summary.files:
            path = summary.directory / name
            info = zipfile.ZipInfo(f"{root}/{name}", date_time=stamp)
            # Parquet is compressed already; text shrinks several times.
            parquet = name.endswith(".parquet")
            info.compress_type = zipfile.ZIP_STORED if parquet else zipfile.ZIP_DEFLATED
            info.file_size = path.stat().st_size  # lets zipfile pick zip64 for large files
            with path.open("rb") as src, archive.open(info, "w") as dst:
                while block := src.read(ZIP_CHUNK):
                    dst.write(block)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()  # the central directory, written on close


def bundle_archive(*, engine: Engine, dataset: Dataset, options: BundleOptions) -> Iterator[bytes]:
    """Build the bundle in a temporary directory now (so failures are ordinary errors), then
    stream it as a zip and remove the directory when the stream ends or is abandoned."""
    directory = Path(tempfile.mkdtemp(prefix="selfinstruct-bundle-"))
    try:
        summary = write_bundle(engine=engine, dataset=dataset, directory=directory, options=options)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise

    def stream() -> Iterator[bytes]:
        try:
            yield from zip_chunks(summary, root=dataset.name)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    return stream()


def push_to_hub(*, directory: Path, repo_id: str, token: str, private: bool) -> str:
    """Create the dataset repository if needed and upload the bundle; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(
        folder_path=directory,
        repo_id=repo_id,
        repo_type="dataset",
        commit_message=f"Upload dataset bundle from selfinstruct {service_version()}",
    )
    return str(repo)
