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
import importlib.metadata
import json
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from huggingface_hub import DatasetCardData
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.models import MACHINE_ORIGINS, Dataset, Run, Task, TaskOrigin, TaskStatus
from app.schemas import BundleFileFormat
from app.services.datasets import pool_languages, seed_languages
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


# --- the card ---


@dataclass
class RunFacts:
    id: int
    strategy: str
    backend: str
    model: str
    status: str
    accepted: int
    filters: dict[str, Any]


@dataclass
class CardFacts:
    """Everything the card states, read from the database in one place."""

    name: str
    description: str
    seeds: int
    accepted: int
    rejected_by_reason: dict[str, int]
    runs: list[RunFacts]
    pool_languages: list[str]


def _card_facts(*, session: Session, dataset: Dataset) -> CardFacts:
    assert dataset.id is not None
    by_status = session.exec(
        select(Task.origin, Task.status, Task.rejection_reason, sa.func.count())
        .where(Task.dataset_id == dataset.id)
        .group_by(col(Task.origin), col(Task.status), col(Task.rejection_reason))
    ).all()
    seeds = accepted = 0
    rejected: Counter[str] = Counter()
    for origin, status, reason, n in by_status:
        if origin == TaskOrigin.seed.value:
            seeds += n if status == TaskStatus.accepted.value else 0
        elif origin in MACHINE_ORIGINS and status == TaskStatus.accepted.value:
            accepted += n
        elif origin in MACHINE_ORIGINS:
            rejected[reason or "unspecified"] += n
    runs = session.exec(select(Run).where(Run.dataset_id == dataset.id).order_by(col(Run.id))).all()
    languages = pool_languages(
        dataset=dataset, seeds=seed_languages(session, [dataset.id]).get(dataset.id, {})
    )
    return CardFacts(
        name=dataset.name,
        description=dataset.description,
        seeds=seeds,
        accepted=accepted,
        rejected_by_reason=dict(rejected.most_common()),
        runs=[
            RunFacts(
                id=run.id or 0,
                strategy=run.strategy,
                backend=run.backend,
                model=run.model,
                status=run.status,
                accepted=run.accepted,
                filters=dict(run.params.get("filters") or {}),
            )
            for run in runs
        ],
        pool_languages=sorted({c for c in map(base_language, languages) if c}),
    )


def size_category(rows: int) -> str:
    """The Hub's `size_categories` bucket for a row count (its list: n<1K ... n>1T)."""
    bounds = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    if rows < 1_000:
        return "n<1K"
    for i, upper in enumerate(bounds[1:]):
        if rows < 10 ** (i + 4):
            return f"{bounds[i]}<n<{upper}"
    return "n>1T"


def service_version() -> str:
    """The installed package's version, the one the API reports too (pyproject's)."""
    try:
        return importlib.metadata.version("selfinstruct")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def judge_ratings_section(facts: CardFacts) -> str | None:
    """Judge ratings of the accepted tasks, once the service stores any.

    Hook: no judge exists yet, so there is nothing to state and the card says so. When one lands,
    read its ratings into CardFacts and return a Markdown section here.
    """
    return None


def _card_metadata(
    *, facts: CardFacts, counts: SplitCounts, options: BundleOptions
) -> DatasetCardData:
    languages = sorted(counts.languages) or facts.pool_languages
    total = sum(counts.rows.values())
    features = [
        {"name": f.name, "dtype": "bool" if pa.types.is_boolean(f.type) else "string"}
        for f in FLAT_SCHEMA
    ]
    extra: dict[str, Any] = {}
    if languages:
        extra["language"] = languages
        extra["multilinguality"] = "multilingual" if len(languages) > 1 else "monolingual"
    return DatasetCardData(
        license=options.license,
        pretty_name=facts.name,
        size_categories=[size_category(total)],
        task_categories=["text-generation"],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        source_datasets=["original"],
        tags=["self-instruct", "synthetic", "instruction-tuning"],
        configs=[
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": split_path(split, options.file_format)}
                    for split in SPLITS
                ],
            }
        ],
        # Features only: `datasets` wants a split's Arrow size next to its row count, which
        # the card's body states instead.
        dataset_info={"features": features},
        **extra,
    )


def _body(*, facts: CardFacts, counts: SplitCounts, options: BundleOptions) -> str:
    lines = [f"# {facts.name}", ""]
    if facts.description:
        lines += [facts.description, ""]
    seeds_note = "included" if options.include_seeds else "not included"
    lines += [
        "Instruction-tuning data grown from a seed pool with the Self-Instruct method "
        "(Wang et al., 2022, arXiv:2212.10560) by the `selfinstruct` service, version "
        f"{service_version()}, exported {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "## Data",
        "",
        "One row per instance: `instruction`, `input` (may be empty), `output`, plus `id` (the "
        "task's id; a task's instances share it), `is_classification`, `origin` (seed, "
        "generated, edited, evolved, backtranslated) and `language` (detected; null if never "
        "detected).",
        "",
        "| split | tasks | rows |",
        "|---|---:|---:|",
        *(f"| {s} | {counts.tasks[s]:,} | {counts.rows[s]:,} |" for s in SPLITS),
        "",
        f"Splits: {SPLIT_RULE}. This is a fixed rule, not a held-out set chosen before generation.",
        "",
        "## How it was made",
        "",
        f"- Seeds: {facts.seeds:,} seed tasks ({seeds_note} in the splits).",
        f"- Accepted machine-made tasks: {facts.accepted:,}.",
        f"- Rejected candidates: {sum(facts.rejected_by_reason.values()):,}"
        + (":" if facts.rejected_by_reason else "."),
        *(f"  - {reason}: {n:,}" for reason, n in facts.rejected_by_reason.items()),
        "",
    ]
    if facts.runs:
        lines += [
            "### Runs",
            "",
            "| run | strategy | model | backend | status | accepted |",
            "|---:|---|---|---|---|---:|",
            *(
                f"| {r.id} | {r.strategy} | {r.model or '-'} | {r.backend} | {r.status} "
                f"| {r.accepted:,} |"
                for r in facts.runs
            ),
            "",
            "### Filters",
            "",
            "Each distinct filter setting and the runs that used it:",
            "",
        ]
        by_setting: dict[str, list[int]] = {}
        for r in facts.runs:
            by_setting.setdefault(json.dumps(r.filters, sort_keys=True, indent=2), []).append(r.id)
        for setting, run_ids in by_setting.items():
            lines += [f"Runs {', '.join(map(str, run_ids))}:", "", "```json", setting, "```", ""]
    else:
        lines += ["No generation runs are recorded for this dataset.", ""]
    lines += ["## Judge ratings", ""]
    lines += [judge_ratings_section(facts) or "No judge has rated these tasks.", ""]
    return "\n".join(lines)


def card_text(*, facts: CardFacts, counts: SplitCounts, options: BundleOptions) -> str:
    """The README.md: the Hub's YAML header between `---` lines, then the body."""
    metadata = _card_metadata(facts=facts, counts=counts, options=options)
    return f"---\n{metadata.to_yaml()}\n---\n\n{_body(facts=facts, counts=counts, options=options)}"


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
    with Session(engine) as session:
        facts = _card_facts(session=session, dataset=dataset)
    (directory / "README.md").write_text(
        card_text(facts=facts, counts=counts, options=options), encoding="utf-8"
    )
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
