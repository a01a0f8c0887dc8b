"""Dataset bundles: train and validation splits plus a Hub dataset card, in the layout
`datasets.load_dataset(DIR)` and the Hugging Face Hub read with no arguments.

    README.md                               the card: YAML header (license, language, size,
                                            configs, features), then how the data was made
    data/train-00000-of-00001.parquet       (or .jsonl) flat rows, FLAT_SCHEMA
    data/validation-00000-of-00001.parquet  (or data/test-... : the dataset's held-out share)

Rows are the Parquet export's (one per instance); a task's instances always share a split.
"""

from __future__ import annotations

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

from app.errors import InvalidInput
from app.models import Dataset, DatasetVersion, holdout_key
from app.schemas.common import ErrorItem
from app.schemas.datasets import BundleFileFormat
from app.services.dataset_card import SplitFacts, card_facts, card_text, service_version
from app.services.export import (
    FLAT_SCHEMA,
    ROWS_PER_GROUP,
    ByteSink,
    ExportRow,
    FlatColumns,
    Selection,
    VersionPart,
    task_batches,
)
from app.services.versions import get_version
from filters.language import UNKNOWN, base_language

Split = Literal["train", "validation", "test"]

# --- the split rule: the dataset's held-out share ---

VALIDATION_SHARE = 0.05


@dataclass(frozen=True)
class SplitRule:
    """A dataset with a held-out share ships it as `test`, exactly the tasks fine-tunes leave
    out and evaluations read; one without gets a small `validation` split by the same key."""

    second: Split
    share: float

    @classmethod
    def of(cls, held_out_share: float) -> SplitRule:
        """The rule of a dataset (or of a version: its share when it was made)."""
        if held_out_share > 0:
            return cls("test", held_out_share)
        return cls("validation", VALIDATION_SHARE)

    @property
    def splits(self) -> tuple[Split, Split]:
        return ("train", self.second)

    def describe(self) -> str:
        what = (
            "the dataset's held-out share: fine-tune jobs from this dataset never train on it"
            if self.second == "test"
            else "a fixed share"
        )
        return (
            f"a task is in `{self.second}` when the first 6 bytes of the SHA-256 of its "
            f"instruction and first input (UTF-8, joined by a newline), read as a big-endian "
            f"integer, fall in the lowest {self.share:.0%} of their range ({what}); every "
            f"instance of a task shares its split. When that leaves a split empty and there are "
            f"at least two tasks, the task nearest the boundary moves into it, because "
            f"`datasets` cannot load an empty split"
        )


DEFAULT_RULE = SplitRule("validation", VALIDATION_SHARE)


def split_key(task: ExportRow) -> float:
    """Where the task falls in [0, 1): its stored held-out key (app.models.holdout_key), from
    its content alone, so it never moves as the pool grows."""
    if task.holdout_key is not None:
        return task.holdout_key
    return holdout_key(task.instruction, task.instances)


def split_of(task: ExportRow, rule: SplitRule = DEFAULT_RULE) -> Split:
    """The task's split by the dataset's held-out rule."""
    return rule.second if split_key(task) < rule.share else "train"


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
    # A version's frozen tasks instead of the pool as it is now; it fixes include_seeds.
    version: DatasetVersion | None = None

    @property
    def with_seeds(self) -> bool:
        if self.version is not None:
            return bool(self.version.selection.get("include_seeds"))
        return self.include_seeds


def bundle_options(
    *,
    session: Session,
    dataset: Dataset,
    version_id: int | None,
    file_format: BundleFileFormat,
    license: str,
    include_seeds: bool,
) -> BundleOptions:
    """The options of a bundle request; a version fixes the selection, so include_seeds with
    one is refused, naming the field."""
    version = None
    if version_id is not None:
        version = get_version(session=session, dataset=dataset, version_id=version_id)
        if include_seeds:
            raise InvalidInput(
                f"include_seeds cannot be combined with version={version_id}: the version "
                "keeps the selection it was made with.",
                errors=[ErrorItem(field="include_seeds", reason="not with version")],
            )
    return BundleOptions(
        file_format=file_format, license=license, include_seeds=include_seeds, version=version
    )


@dataclass
class SplitCounts:
    splits: tuple[Split, ...] = DEFAULT_RULE.splits
    rows: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    languages: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for split in self.splits:
            self.rows.setdefault(split, 0)
            self.tasks.setdefault(split, 0)


@dataclass
class _Edge:
    """The task nearest the split boundary on each side, in case a split comes out empty."""

    rule: SplitRule
    lowest_train: tuple[float, int] = (2.0, 0)  # (key, task id)
    highest_other: tuple[float, int] = (-1.0, 0)

    def see(self, task: ExportRow, split: Split) -> None:
        key = (split_key(task), task.task_id)
        if split == "train":
            self.lowest_train = min(self.lowest_train, key)
        else:
            self.highest_other = max(self.highest_other, key)

    def move(self, counts: SplitCounts) -> dict[int, Split]:
        """The one task to move so neither split is empty, if the rule left one empty. A
        held-out task never moves into `train`: that would train on it."""
        other = self.rule.second
        if counts.tasks[other] == 0 and counts.tasks["train"] >= 2:
            return {self.lowest_train[1]: other}
        if counts.tasks["train"] == 0 and counts.tasks[other] >= 2 and other != "test":
            return {self.highest_other[1]: "train"}
        return {}


def _write_splits(
    *,
    engine: Engine,
    dataset_id: int,
    directory: Path,
    options: BundleOptions,
    rule: SplitRule,
    moved: dict[int, Split],
) -> tuple[SplitCounts, _Edge]:
    (directory / "data").mkdir(parents=True, exist_ok=True)
    make = _ParquetSplit if options.file_format == BundleFileFormat.parquet else _JsonlSplit
    writers: dict[str, _SplitWriter] = {
        split: make(directory / split_path(split, options.file_format), ROWS_PER_GROUP)
        for split in rule.splits
    }
    counts, edge = SplitCounts(splits=rule.splits), _Edge(rule)
    try:
        selection: Selection | VersionPart = Selection(include_seeds=options.include_seeds)
        if options.version is not None and options.version.id is not None:
            selection = VersionPart(version_id=options.version.id)
        for tasks in task_batches(engine=engine, dataset_id=dataset_id, selection=selection):
            for task in tasks:
                if not task.instances:
                    continue  # nothing to learn from; the flat export drops it too
                split = moved.get(task.task_id) or split_of(task, rule)
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
    *,
    engine: Engine,
    dataset_id: int,
    directory: Path,
    options: BundleOptions,
    rule: SplitRule = DEFAULT_RULE,
) -> SplitCounts:
    """Both splits' files. A second pass, only when the rule left a split empty (a pool of a few
    dozen tasks), moves one task so `datasets.load_dataset` can load both."""
    moved: dict[int, Split] = {}
    for _ in range(2):
        counts, edge = _write_splits(
            engine=engine,
            dataset_id=dataset_id,
            directory=directory,
            options=options,
            rule=rule,
            moved=moved,
        )
        moved = edge.move(counts) if not moved else {}
        if not moved:
            break
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
    share = options.version.held_out_share if options.version else dataset.held_out_share
    rule = SplitRule.of(share)
    counts = write_splits(
        engine=engine, dataset_id=dataset.id, directory=directory, options=options, rule=rule
    )
    splits = SplitFacts(
        rows=counts.rows,
        tasks=counts.tasks,
        paths={split: split_path(split, options.file_format) for split in rule.splits},
        languages=sorted(counts.languages),
        rule=rule.describe(),
    )
    with Session(engine) as session:
        facts = card_facts(session=session, dataset=dataset)
    card = card_text(
        facts=facts,
        splits=splits,
        license=options.license,
        include_seeds=options.with_seeds,
        version=options.version,
    )
    (directory / "README.md").write_text(card, encoding="utf-8")
    files = ["README.md", *(split_path(s, options.file_format) for s in rule.splits)]
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
