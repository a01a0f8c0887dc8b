"""Database tables. They stay inside `app/`; clients see the classes in `app/schemas.py`."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# Constraint names are explicit so Alembic revisions are stable across SQLite and PostgreSQL.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timestamps come back timezone-aware in UTC; SQLite alone would return naive values."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        """On SQLite, the same parse as SQLAlchemy's (`datetime.fromisoformat`) and the same
        UTC stamp in one call instead of three: 1.9 µs a value becomes 0.5, and a page of 50
        tasks reads 100 of them."""
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        parse = datetime.fromisoformat

        def process(value: str | None) -> datetime | None:
            if value is None:
                return None
            parsed = parse(value)
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)

        return process


def _ts(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, **kwargs)


class TaskOrigin(StrEnum):
    seed = "seed"
    generated = "generated"  # self_instruct, alpaca, template, magpie
    edited = "edited"
    evolved = "evolved"  # rewritten from a pool task (strategy `evolve`)
    backtranslated = "backtranslated"  # an instruction written for a user's passage


# Tasks a run or a reviewer made: everything but seeds. Exports and the pool treat them alike.
MACHINE_ORIGINS: tuple[str, ...] = tuple(o.value for o in TaskOrigin if o != TaskOrigin.seed)


class TaskStatus(StrEnum):
    accepted = "accepted"
    rejected = "rejected"


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class JobStatus(StrEnum):
    validating_files = "validating_files"
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Dataset(SQLModel, table=True):
    """A named pool: seeds, tasks, runs and jobs belong to exactly one."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, sa_column_kwargs={"unique": True}, nullable=False)
    description: str = Field(default="", max_length=2000)
    # None: the languages of its seeds; a code overrides them (filters.language).
    language: str | None = Field(default=None, max_length=16)
    # Held-out share and decontamination (app/services/heldout.py, decontamination.py).
    held_out_share: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    decontaminate_against: list[str] = Field(default_factory=list, sa_type=JSONType)
    decontamination_threshold: float = Field(
        default=0.7, sa_column_kwargs={"server_default": "0.7"}
    )
    # What the last full decontamination pass saw of the evaluation sets; a different view
    # now means the marks are stale (app/services/decontamination.py).
    decontamination_state: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


def holdout_text(instruction: str, instances: list[dict[str, str]] | None) -> str:
    """What identifies a task for held-out sets and decontamination: its instruction plus the
    input of its first instance (the one an evaluation asks)."""
    first = (instances or [{}])[0].get("input", "") if instances else ""
    return f"{instruction.strip()}\n{first.strip()}".strip()


def holdout_key(instruction: str, instances: list[dict[str, str]] | None) -> float:
    """Where a task falls in [0, 1): the first 6 bytes of the SHA-256 of `holdout_text`. It
    depends on the content only, so it never moves as the pool grows; a dataset holds out the
    tasks whose key is below its `held_out_share`."""
    digest = hashlib.sha256(holdout_text(instruction, instances).encode()).digest()
    return int.from_bytes(digest[:6]) / 2**48


def _holdout_key_default(context: Any) -> float:
    """Filled in on every insert, ORM or Core (the pipeline inserts with Core)."""
    params = context.get_current_parameters()
    return holdout_key(params.get("instruction") or "", params.get("instances"))


class Task(SQLModel, table=True):
    """A seed or a candidate, accepted or rejected, with why and where it came from."""

    __table_args__ = (
        sa.UniqueConstraint("dataset_id", "seed_id", name="uq_task_dataset_seed"),
        sa.Index("ix_task_dataset_origin_status", "dataset_id", "origin", "status", "id"),
        # Export and review read a dataset's accepted tasks in id order without sorting.
        sa.Index("ix_task_dataset_status_id", "dataset_id", "status", "id"),
        sa.Index("ix_task_run", "run_id", "id"),
        # The task browser, stats and exports filter by rating (app/services/ratings.py).
        sa.Index("ix_task_dataset_rating", "dataset_id", "rating", "id"),
        # A page of one dataset's tasks in id order, whatever the other datasets hold.
        sa.Index("ix_task_dataset_id", "dataset_id", "id"),
        # What changed since a clock (app/services/dataset_lock.py): runs' commits, warm pools.
        sa.Index("ix_task_dataset_updated", "dataset_id", "updated_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False
        )
    )
    seed_id: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    instruction: str = Field(sa_type=sa.Text, nullable=False)
    language: str | None = Field(default=None, max_length=16)  # detected: en, zh, ..., unknown
    instances: list[dict[str, str]] = Field(default_factory=list, sa_type=JSONType)
    is_classification: bool | None = Field(default=None)
    origin: str = Field(default=TaskOrigin.seed, max_length=16)
    status: str = Field(default=TaskStatus.accepted, max_length=16)
    rejection_reason: str | None = Field(default=None, max_length=64)
    rejection_detail: str | None = Field(default=None, sa_type=sa.Text)
    max_rouge: float | None = Field(default=None)
    nearest: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONType)
    run_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("run.id", ondelete="SET NULL"), nullable=True
        ),
    )
    lineage: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    edited_from_id: int | None = Field(default=None)
    holdout_key: float | None = Field(
        default=None, sa_column=sa.Column(sa.Float, default=_holdout_key_default, nullable=True)
    )
    # Scores above the dataset's threshold against a task of an evaluation set it must stay
    # clean of; `contamination` says which task, in which set, and the score.
    contaminated: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    contamination: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    # The latest judgement (a TaskJudgement row): its rating A-D, None when the judge's answer
    # held none; judgement_id None: never judged.
    rating: str | None = Field(default=None, max_length=1)
    judgement_id: int | None = Field(default=None)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


@sa.event.listens_for(Task, "before_update")
def _rekey_changed_task(_mapper: Any, _conn: Any, task: Task) -> None:
    """A seed re-posted with new text moves to where its new content falls."""
    task.holdout_key = holdout_key(task.instruction, task.instances)


class TaskJudgement(SQLModel, table=True):
    """One judge's rating of a task (generators.judge_prompts). A task may be judged again;
    the latest row is the one its `rating` and `judgement_id` show."""

    __tablename__ = "judgement"
    __table_args__ = (
        sa.Index("ix_judgement_task", "task_id", "id"),
        sa.Index("ix_judgement_run_task", "run_id", "task_id"),
        # A judgement job resumes by skipping the tasks it already judged.
        sa.Index("ix_judgement_judgement_job_task", "judgement_job_id", "task_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("task.id", ondelete="CASCADE"), nullable=False
        )
    )
    rating: str | None = Field(default=None, max_length=1)  # None: unjudged (no rating found)
    rationale: str = Field(default="", sa_type=sa.Text)
    judge_model: str = Field(max_length=200)
    prompt_version: str = Field(max_length=64)
    # Who asked for it: a generation run with a judge stage, or a judgement job (one of the two).
    run_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("run.id", ondelete="SET NULL"), nullable=True
        ),
    )
    judgement_job_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("judgement_job.id", ondelete="SET NULL"), nullable=True
        ),
    )
    created_at: datetime = _ts()


class Run(SQLModel, table=True):
    """A generation run: parameters in, counters out, claimed by one worker at a time."""

    __table_args__ = (sa.Index("ix_run_status", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False
        )
    )
    strategy: str = Field(max_length=32)  # a name in app.strategies' registry
    backend: str = Field(default="local", max_length=32)
    model: str = Field(default="", max_length=200)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    target: int = Field(default=0)
    shards: int = Field(default=1)  # parts executed by workers of their own (job_part)
    status: str = Field(default=RunStatus.queued, max_length=16)
    requests: int = Field(default=0)
    failed_requests: int = Field(default=0)
    prompt_tokens: int = Field(default=0)
    completion_tokens: int = Field(default=0)
    cost: float = Field(default=0.0)
    candidates: int = Field(default=0)
    accepted: int = Field(default=0)
    rejected: int = Field(default=0)
    rejected_by_reason: dict[str, int] = Field(default_factory=dict, sa_type=JSONType)
    instances: int = Field(default=0)
    state: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    error: str | None = Field(default=None, sa_type=sa.Text)
    worker_id: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_epoch: int = Field(default=0)  # claims so far; the current one is the fencing token
    lost_count: int = Field(default=0)  # holders lost in a row with no progress committed
    progressed: bool = Field(default=False)  # a commit landed since the current claim
    created_at: datetime = _ts()
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = _ts()


class FineTuningJobRow(SQLModel, table=True):
    """An OpenAI-shaped fine-tune job, claimed by a (possibly remote) GPU worker."""

    __tablename__ = "finetune_job"
    __table_args__ = (sa.Index("ix_finetune_job_status", "status", "created_at"),)

    id: str = Field(primary_key=True, max_length=64)
    dataset_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset.id", ondelete="SET NULL"), nullable=True
        ),
    )
    model: str = Field(max_length=200)
    training_file: str | None = Field(default=None, max_length=64)
    # The dataset version it trained on (a job from a dataset; a file upload has none).
    dataset_version_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset_version.id", ondelete="SET NULL"), nullable=True
        ),
    )
    validation_file: str | None = Field(default=None, max_length=64)
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None)
    method: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    hyperparameters: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    nodes: int = Field(default=1)  # machines that train it together (torchrun, c10d rendezvous)
    status: str = Field(default=JobStatus.validating_files, max_length=32)
    fine_tuned_model: str | None = Field(default=None, max_length=200)
    trained_tokens: int | None = Field(default=None)
    error: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    progress: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    data_stats: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    worker_id: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_epoch: int = Field(default=0)  # claims so far; the current one is the fencing token
    lost_count: int = Field(default=0)  # holders lost in a row with no progress committed
    progressed: bool = Field(default=False)  # a commit landed since the current claim
    created_at: datetime = _ts()
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class FineTuningJobEventRow(SQLModel, table=True):
    __tablename__ = "finetune_event"
    __table_args__ = (sa.Index("ix_finetune_event_job", "job_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(
        sa_column=sa.Column(
            sa.String(64), sa.ForeignKey("finetune_job.id", ondelete="CASCADE"), nullable=False
        )
    )
    level: str = Field(default="info", max_length=16)
    message: str = Field(sa_type=sa.Text)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = _ts()


class FineTuningJobCheckpointRow(SQLModel, table=True):
    __tablename__ = "finetune_checkpoint"
    __table_args__ = (sa.Index("ix_finetune_checkpoint_job", "job_id", "step"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(
        sa_column=sa.Column(
            sa.String(64), sa.ForeignKey("finetune_job.id", ondelete="CASCADE"), nullable=False
        )
    )
    step: int
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    path: str = Field(max_length=1000)
    created_at: datetime = _ts()


class RunEvent(SQLModel, table=True):
    """Progress of a run, in order; the event stream reads these so any process can serve it."""

    __tablename__ = "run_event"
    __table_args__ = (sa.Index("ix_run_event_run", "run_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("run.id", ondelete="CASCADE"), nullable=False)
    )
    kind: str = Field(max_length=32)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = _ts()


class JudgementJob(SQLModel, table=True):
    """A judgement job: a judge rates a dataset's existing tasks (app/pipeline/judgement_job.py),
    claimed with a lease like every job kind. Its statuses are a run's (queued ... cancelled),
    so it shares RunStatus and the public schema keeps its enum."""

    __tablename__ = "judgement_job"
    __table_args__ = (
        sa.Index("ix_judgement_job_status", "status", "id"),
        sa.Index("ix_judgement_job_dataset", "dataset_id", "id"),
        sa.Index("ix_judgement_job_former_run", "former_run_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False
        )
    )
    # Jobs made before migration 0008 were runs; their old id answers GET /v1/runs/{id} with a
    # pointer here (no foreign key: that run row is gone).
    former_run_id: int | None = Field(default=None)
    backend: str = Field(default="local", max_length=32)
    model: str = Field(default="", max_length=200)
    # The filters as posted, plus `max_task_id`: tasks added after creation are not the job's.
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    status: str = Field(default=RunStatus.queued, max_length=16)
    stop_reason: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, sa_type=sa.Text)
    # Progress: `done` tasks have a judgement from this job, `judged` of them a rating A-D
    # (counted per level in `ratings`), `unjudged` none; `total` matched at creation.
    total: int = Field(default=0)
    done: int = Field(default=0)
    judged: int = Field(default=0)
    unjudged: int = Field(default=0)
    ratings: dict[str, int] = Field(default_factory=dict, sa_type=JSONType)
    # Spend: every judge request, failed ones (after retries; their task stays unjudged) too.
    requests: int = Field(default=0)
    failed_requests: int = Field(default=0)
    prompt_tokens: int = Field(default=0)
    completion_tokens: int = Field(default=0)
    cost: float = Field(default=0.0)
    # Live and diagnostic values: in_flight, executions, last_error.
    state: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    # The lease (app/leases.py): holder, expiry, claims so far (the fencing token), holders
    # lost in a row with no committed progress, and whether a commit landed since this claim.
    worker_id: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    lost_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    progressed: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    created_at: datetime = _ts()
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = _ts()


class JudgementEvent(SQLModel, table=True):
    """Progress of a judgement job, in order, for its event stream."""

    __tablename__ = "judgement_event"
    __table_args__ = (sa.Index("ix_judgement_event_job", "judgement_job_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    judgement_job_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("judgement_job.id", ondelete="CASCADE"), nullable=False
        )
    )
    kind: str = Field(max_length=32)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = _ts()


class Document(SQLModel, table=True):
    """Material a user posted so runs can write instructions for it (strategy `backtranslate`)."""

    __table_args__ = (sa.Index("ix_document_dataset", "dataset_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False
        )
    )
    name: str = Field(max_length=255)
    format: str = Field(max_length=16)  # text | markdown | jsonl
    bytes: int
    sha256: str = Field(max_length=64)
    passages: int = Field(default=0)
    created_at: datetime = _ts()


class Passage(SQLModel, table=True):
    """One piece of a document, of at most the size asked for; the output of a candidate."""

    __table_args__ = (
        sa.Index("ix_passage_dataset", "dataset_id", "id"),
        sa.Index("ix_passage_document", "document_id", "position"),
    )

    id: int | None = Field(default=None, primary_key=True)
    document_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("document.id", ondelete="CASCADE"), nullable=False
        )
    )
    dataset_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False
        )
    )
    position: int
    text: str = Field(sa_type=sa.Text)
    language: str = Field(default="unknown", max_length=16)


class StoredFile(SQLModel, table=True):
    """An uploaded (or frozen) JSONL file; the bytes live under the data dir, named by id only."""

    __tablename__ = "file"

    id: str = Field(primary_key=True, max_length=64)
    purpose: str = Field(max_length=32)
    filename: str = Field(max_length=255)
    bytes: int
    sha256: str = Field(max_length=64)
    lines: int = Field(default=0)
    dataset_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset.id", ondelete="SET NULL"), nullable=True
        ),
    )
    created_at: datetime = _ts()


class JobPart(SQLModel, table=True):
    """A part of a job held on a lease of its own (a shard of a run across workers, a node of a
    fine-tune across machines): claimed, renewed, fenced and capped like a whole job
    (app/leases.py), so one job runs on several workers at once and a dead worker's part alone
    is taken over. The job's row keeps its status; what a lost part means is its owner's call."""

    __tablename__ = "job_part"
    __table_args__ = (
        sa.UniqueConstraint("kind", "job_id", "part", name="uq_job_part"),
        sa.Index("ix_job_part_status", "status", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # app.leases.kind_slug of the job's kind
    job_id: str = Field(max_length=64)
    part: int
    status: str = Field(default="queued", max_length=16)
    error: str | None = Field(default=None, sa_type=sa.Text)
    worker_id: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_epoch: int = Field(default=0)
    lost_count: int = Field(default=0)
    progressed: bool = Field(default=False)
    # The part's own figures and settings (a shard's share and counters, a node's endpoint).
    state: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = _ts()
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = _ts()


class EvaluationStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Evaluation(SQLModel, table=True):
    """An evaluation job: models answer a frozen list of reference tasks; claimed with a lease."""

    __table_args__ = (sa.Index("ix_evaluation_status", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False
        )
    )
    # The dataset version its reference tasks were drawn from.
    dataset_version_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset_version.id", ondelete="SET NULL"), nullable=True
        ),
    )
    models: list[str] = Field(default_factory=list, sa_type=JSONType)
    judge: str | None = Field(default=None, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    status: str = Field(default=EvaluationStatus.queued, max_length=16)
    tasks: int = Field(default=0)
    progress: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    results: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    error: str | None = Field(default=None, sa_type=sa.Text)
    worker_id: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_epoch: int = Field(default=0)  # claims so far; the current one is the fencing token
    lost_count: int = Field(default=0)  # holders lost in a row with no progress committed
    progressed: bool = Field(default=False)  # a commit landed since the current claim
    created_at: datetime = _ts()
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = _ts()


class EvaluationSample(SQLModel, table=True):
    """One reference task of an evaluation with every answer, rating and pairwise verdict, so a
    restarted job redoes nothing stored and a person can read the answers side by side."""

    __tablename__ = "evaluation_sample"
    __table_args__ = (
        sa.UniqueConstraint("evaluation_id", "position", name="uq_evaluation_sample_position"),
    )

    id: int | None = Field(default=None, primary_key=True)
    evaluation_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("evaluation.id", ondelete="CASCADE"), nullable=False
        )
    )
    position: int
    task_id: int | None = Field(default=None)
    instruction: str = Field(sa_type=sa.Text)
    input: str = Field(default="", sa_type=sa.Text)
    reference: str = Field(default="", sa_type=sa.Text)
    # model -> {text, failed, rouge_l, rating, rationale}
    answers: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    # "a|b" -> {"first": verdict with a shown first, "second": with b first, "winner": a|b|tie}
    pairwise: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)


class EvaluationEvent(SQLModel, table=True):
    """Progress of an evaluation, in order, for its event stream."""

    __tablename__ = "evaluation_event"
    __table_args__ = (sa.Index("ix_evaluation_event_evaluation", "evaluation_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    evaluation_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("evaluation.id", ondelete="CASCADE"), nullable=False
        )
    )
    kind: str = Field(max_length=32)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = _ts()


class DatasetVersion(SQLModel, table=True):
    """A frozen selection of a dataset's tasks: which tasks, in which state, on which side of the
    held-out split. The content lives in its chunks, so edits to the pool never reach it."""

    __tablename__ = "dataset_version"
    __table_args__ = (sa.Index("ix_dataset_version_dataset", "dataset_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False
        )
    )
    tag: str | None = Field(default=None, max_length=64)
    # The export selection it was made with (include_seeds, split, min_rating, ...).
    selection: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    held_out_share: float = Field(default=0.0)  # the dataset's, when the version was made
    tasks: int = Field(default=0)
    instances: int = Field(default=0)
    content_sha256: str = Field(max_length=64)
    # Tasks by origin, strategy, language, rating and split side.
    counts: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    stored_bytes: int = Field(default=0)  # compressed, as stored
    created_at: datetime = _ts()


class DatasetVersionChunk(SQLModel, table=True):
    """A run of consecutive frozen task records of a version: canonical JSON lines, compressed
    with zstd (app/services/versions.py says why and measures it)."""

    __tablename__ = "dataset_version_chunk"

    version_id: int = Field(
        sa_column=sa.Column(
            sa.Integer,
            sa.ForeignKey("dataset_version.id", ondelete="CASCADE"),
            primary_key=True,
        )
    )
    position: int = Field(primary_key=True)
    tasks: int
    raw_bytes: int  # the records' size uncompressed; zstd needs it to decompress
    data: bytes = Field(sa_type=sa.LargeBinary)


class Recipe(SQLModel, table=True):
    """A recipe: named steps (generate, judge, version, finetune, evaluate) run in order for
    `rounds` rounds, each step a child job of its own kind (app/pipeline/recipe_job.py). The
    recipe itself is claimed with a lease like every job kind; `state` records where it is and
    each child's id, written in the transaction that creates the child."""

    __tablename__ = "recipe"
    __table_args__ = (sa.Index("ix_recipe_status", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    dataset_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False
        )
    )
    # The recipe as posted, validated (app/schemas/recipes.py RecipeCreate), with defaults.
    document: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    status: str = Field(default=RunStatus.queued, max_length=16)
    stop_reason: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, sa_type=sa.Text)
    # Where it is: `round`, `step` (index), `children` ({"<round>:<step>": {kind, id}}), the
    # finished rounds' table (`rounds`), the models tuned so far.
    state: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    worker_id: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    lost_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    progressed: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    created_at: datetime = _ts()
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = _ts()


class RecipeEvent(SQLModel, table=True):
    """What a recipe did, in order: a step's child created, a child's end, a round's row."""

    __tablename__ = "recipe_event"
    __table_args__ = (sa.Index("ix_recipe_event_recipe", "recipe_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    recipe_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("recipe.id", ondelete="CASCADE"), nullable=False
        )
    )
    kind: str = Field(max_length=32)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = _ts()
