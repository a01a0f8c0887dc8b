"""Fine-tune jobs: create (freezing the data and validating it), read, list, cancel, events."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app import leases
from app.errors import InvalidInput, NotFound
from app.finetune.schemas import (
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    JobError,
    Progress,
    TrainingData,
)
from app.models import (
    Dataset,
    DatasetVersion,
    FineTuningJobCheckpointRow,
    FineTuningJobEventRow,
    FineTuningJobRow,
    JobStatus,
    StoredFile,
    utcnow,
)
from app.schemas.common import ErrorItem
from app.schemas.datasets import ExportFormat, ExportSplit
from app.services import base_models, versions
from app.services.datasets import get_dataset
from app.services.export import VersionPart, export_chunks
from app.services.files import file_path, get_file, store_file
from app.settings import BUNDLED_MODEL_ID, Settings
from training.data import read_chat_jsonl
from training.errors import TrainingDataError


def artifacts_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_dir / "artifacts" / job_id


def tuned_model_dir(settings: Settings, job: FineTuningJobRow) -> str:
    """Where a succeeded job's model is: a remote worker reports its own (shared) path."""
    reported = (job.progress or {}).get("model_dir")
    return str(reported) if reported else str(artifacts_dir(settings, job.id) / "final")


def _epoch(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _tuned_job(session: Session, model: str) -> FineTuningJobRow | None:
    return session.exec(
        select(FineTuningJobRow).where(
            FineTuningJobRow.fine_tuned_model == model,
            FineTuningJobRow.status == JobStatus.succeeded.value,
        )
    ).first()


def base_model_context(session: Session, settings: Settings, model: str) -> int | None:
    """The context length of a model a job may start from (None where it is not stated);
    NotFound or InvalidInput, naming `model`, for one it cannot: unknown, or a folder of
    SELFINSTRUCT_BASE_MODELS_DIR that is not a loadable model."""
    if model == BUNDLED_MODEL_ID:
        return base_models.bundled_context_length()
    folder = base_models.folder_of(settings, model)
    if folder is not None:
        problem = base_models.problem(folder)
        if problem is not None:
            raise InvalidInput(
                f"Model '{model}' in SELFINSTRUCT_BASE_MODELS_DIR cannot be fine-tuned: "
                f"{problem}. A base model folder needs config.json, weights and a tokenizer, "
                "as save_pretrained writes them.",
                errors=[ErrorItem(field="model", reason=f"not a loadable model: {problem}")],
            )
        found = base_models.find_base_model(settings, model)
        return found.context_length if found else None
    job = _tuned_job(session, model)
    if job is None:
        raise NotFound(
            f"Model '{model}' cannot be fine-tuned here; use '{BUNDLED_MODEL_ID}', a base model "
            "from GET /v1/models or a fine_tuned_model of a succeeded job.",
            errors=[ErrorItem(field="model", reason="not a fine-tunable model")],
        )
    try:
        config = json.loads((Path(tuned_model_dir(settings, job)) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return base_models.context_length(config) if isinstance(config, dict) else None


def check_request(session: Session, settings: Settings, body: FineTuningJobCreate) -> int:
    """Refuse, naming the field, what no worker could train; before anything is stored.
    Returns the job's max_seq_len: the default shrinks to a shorter model context, a value the
    request gives must fit in it."""
    context = base_model_context(session, settings, body.model)
    max_seq_len = body.max_seq_len
    if context is not None and "max_seq_len" not in body.model_fields_set:
        max_seq_len = min(max_seq_len, context)
    elif context is not None and body.max_seq_len > context:
        raise InvalidInput(
            f"max_seq_len={body.max_seq_len} is longer than model '{body.model}' takes "
            f"({context} tokens); use at most {context}.",
            errors=[ErrorItem(field="max_seq_len", reason=f"above the context length {context}")],
        )
    if body.devices > settings.finetune_max_devices:
        raise InvalidInput(
            f"devices={body.devices} is more than a job may ask for here "
            f"({settings.finetune_max_devices}, SELFINSTRUCT_FINETUNE_MAX_DEVICES).",
            errors=[
                ErrorItem(
                    field="devices", reason=f"above the limit {settings.finetune_max_devices}"
                )
            ],
        )
    if body.nodes > settings.finetune_max_nodes:
        raise InvalidInput(
            f"nodes={body.nodes} is more than a job may ask for here "
            f"({settings.finetune_max_nodes}, SELFINSTRUCT_FINETUNE_MAX_NODES).",
            errors=[
                ErrorItem(field="nodes", reason=f"above the limit {settings.finetune_max_nodes}")
            ],
        )
    if body.parallelism == "fsdp" and body.lora is not None:
        raise InvalidInput(
            "parallelism='fsdp' trains full models only; LoRA's trained state is small, so use "
            "parallelism='ddp' (the default) with lora.",
            errors=[ErrorItem(field="parallelism", reason="fsdp does not take lora")],
        )
    return max_seq_len


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(FineTuningJobEventRow(job_id=job_id, level=level, message=message, data=data or {}))


def create_job(
    *, session: Session, settings: Settings, body: FineTuningJobCreate
) -> FineTuningJobRow:
    """Record the job, freeze its data, validate it; a bad file fails the job, not the request."""
    max_seq_len = check_request(session, settings, body)
    dataset: Dataset | None = None
    version: DatasetVersion | None = None
    if body.dataset is not None:
        dataset = get_dataset(session=session, name=body.dataset)
        version = _training_version(session, dataset, body.version)
        assert dataset.id is not None
        frozen = (
            store_file(
                session=session,
                settings=settings,
                purpose="fine-tune",
                dataset_id=dataset.id,
                filename=f"{dataset.name}-v{version.id}-openai_messages.jsonl",
                chunks=export_chunks(
                    engine=session.get_bind().engine,
                    dataset_id=dataset.id,
                    fmt=ExportFormat.openai_messages,
                    # The held-out side stays out of training, as it was when frozen.
                    selection=VersionPart(version_id=version.id, split=ExportSplit.train),
                ),
            )
            if version is not None and version.id is not None
            else None
        )
        training_file = frozen.id if frozen else None
    else:
        training_file = get_file(session=session, file_id=body.training_file or "").id
    if body.validation_file is not None:
        get_file(session=session, file_id=body.validation_file)
    hyper = body.hyper().resolved()
    job = FineTuningJobRow(
        id=f"ftjob-{secrets.token_hex(12)}",
        dataset_id=dataset.id if dataset else None,
        dataset_version_id=version.id if version else None,
        model=body.model,
        training_file=training_file,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": hyper},
            "lora": body.lora.model_dump() if body.lora else None,
            "max_seq_len": max_seq_len,
            "long_examples": body.long_examples,
            "max_steps": body.max_steps,
            "checkpoint_interval": body.checkpoint_interval,
            "devices": body.devices,
            "parallelism": body.parallelism,
        },
        hyperparameters=hyper,
        nodes=body.nodes,
        status=JobStatus.validating_files,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "Validating training file")
    _validate(session, settings, job)
    session.commit()
    session.refresh(job)
    return job


def _training_version(
    session: Session, dataset: Dataset, version_id: int | None
) -> DatasetVersion | None:
    """The version a job trains on: the one named (it must hold train-side tasks), else one
    made for it (None when the dataset has nothing to train on: the job fails saying so)."""
    if version_id is None:
        return versions.version_for_training(session=session, dataset=dataset)
    version = versions.get_version(session=session, dataset=dataset, version_id=version_id)
    if not version.counts.get("split", {}).get("train"):
        raise InvalidInput(
            f"Version {version_id} holds no tasks outside the held-out share, so there is "
            "nothing to train on; name a version made with split=train or all.",
            errors=[ErrorItem(field="version", reason="no train-side tasks")],
        )
    return version


def _validate(session: Session, settings: Settings, job: FineTuningJobRow) -> None:
    if job.training_file is None:
        _fail(
            session,
            job,
            "invalid_training_file",
            "The dataset has no accepted tasks to train on.",
            "dataset",
        )
        return
    stats: dict[str, Any] = {}
    for param, file_id in (
        ("training_file", job.training_file),
        ("validation_file", job.validation_file),
    ):
        if file_id is None:
            continue
        try:
            examples, sha = read_chat_jsonl(file_path(settings, file_id))
        except TrainingDataError as exc:
            _fail(session, job, f"invalid_{param}", f"{file_id}: {exc}", param)
            return
        if len(examples) > settings.max_training_examples:
            _fail(
                session,
                job,
                f"invalid_{param}",
                f"{file_id} has {len(examples)} examples; the limit is "
                f"{settings.max_training_examples} (SELFINSTRUCT_MAX_TRAINING_EXAMPLES).",
                param,
            )
            return
        if param == "training_file":
            stats = {"examples": len(examples), "sha256": sha}
    job.data_stats = stats
    job.status = JobStatus.queued
    add_event(
        session, job.id, f"Files validated: {stats['examples']} training examples", data=stats
    )


def _fail(
    session: Session, job: FineTuningJobRow, code: str, message: str, param: str | None
) -> None:
    job.status = JobStatus.failed
    job.error = {"code": code, "message": message, "param": param}
    job.finished_at = utcnow()
    add_event(session, job.id, message, level="error", data={"code": code})


def get_job(*, session: Session, job_id: str) -> FineTuningJobRow:
    job = session.get(FineTuningJobRow, job_id)
    if job is None:
        raise NotFound(f"Fine-tuning job '{job_id}' does not exist.")
    return job


def list_jobs(
    *, session: Session, after: str | None, limit: int
) -> tuple[list[FineTuningJobRow], bool]:
    query = select(FineTuningJobRow).order_by(
        col(FineTuningJobRow.created_at).desc(), col(FineTuningJobRow.id).desc()
    )
    if after:
        anchor = get_job(session=session, job_id=after)
        query = query.where(
            (col(FineTuningJobRow.created_at) < anchor.created_at)
            | (
                (col(FineTuningJobRow.created_at) == anchor.created_at)
                & (col(FineTuningJobRow.id) < anchor.id)
            )
        )
    rows = list(session.exec(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def cancel_job(*, session: Session, job: FineTuningJobRow) -> FineTuningJobRow:
    """Idempotent; final states never change. The worker stops within one optimizer step."""
    result: FineTuningJobRow = leases.cancel(session, job)
    return result


def list_events(
    *, session: Session, job: FineTuningJobRow, after: str | None, limit: int
) -> tuple[list[FineTuningJobEventRow], bool]:
    """Newest first, as OpenAI lists them; `after` is an event id from a previous page."""
    query = select(FineTuningJobEventRow).where(FineTuningJobEventRow.job_id == job.id)
    if after:
        number = after.removeprefix("ftevent-")
        if not (number.isascii() and number.isdigit() and len(number) <= 18):
            raise InvalidInput(
                f"after must be an event id from a previous page (ftevent-<n>), got '{after}'.",
                errors=[ErrorItem(field="after", reason="not an event id")],
            )
        query = query.where(col(FineTuningJobEventRow.id) < int(number))
    rows = list(session.exec(query.order_by(col(FineTuningJobEventRow.id).desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def events_after(engine: Engine, *, job_id: str, after: int) -> list[FineTuningJobEventRow]:
    """A job's events after id `after`, oldest first (what a live stream sends next)."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(FineTuningJobEventRow)
                .where(
                    FineTuningJobEventRow.job_id == job_id, col(FineTuningJobEventRow.id) > after
                )
                .order_by(col(FineTuningJobEventRow.id))
            )
        )


def job_status(engine: Engine, *, job_id: str) -> str:
    with Session(engine) as session:
        job = session.get(FineTuningJobRow, job_id)
        return job.status if job is not None else JobStatus.failed.value


def list_checkpoints(
    *, session: Session, job: FineTuningJobRow
) -> list[FineTuningJobCheckpointRow]:
    return list(
        session.exec(
            select(FineTuningJobCheckpointRow)
            .where(FineTuningJobCheckpointRow.job_id == job.id)
            .order_by(col(FineTuningJobCheckpointRow.step).desc())
        )
    )


def job_public(*, session: Session, job: FineTuningJobRow) -> FineTuningJob:
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    stats = job.data_stats or {}
    return FineTuningJob(
        id=job.id,
        created_at=_epoch(job.created_at) or 0,
        finished_at=_epoch(job.finished_at),
        model=job.model,
        fine_tuned_model=job.fine_tuned_model,
        status=job.status,
        validation_file=job.validation_file,
        training_file=job.training_file,
        hyperparameters=job.hyperparameters,
        method=job.method,
        trained_tokens=job.trained_tokens,
        error=JobError(**job.error) if job.error else None,
        seed=job.seed or 0,
        suffix=job.suffix,
        dataset=dataset.name if dataset else None,
        version=job.dataset_version_id,
        nodes=job.nodes,
        progress=Progress(
            **{k: v for k, v in (job.progress or {}).items() if k in Progress.model_fields}
        ),
        training_data=TrainingData(
            examples=stats.get("examples"),
            tokens=stats.get("tokens"),
            sha256=stats.get("sha256"),
            truncated_examples=stats.get("truncated_examples"),
            dropped_examples=stats.get("dropped_examples"),
        ),
    )


def event_public(event: FineTuningJobEventRow) -> FineTuningJobEvent:
    return FineTuningJobEvent(
        id=f"ftevent-{event.id}",
        created_at=_epoch(event.created_at) or 0,
        level=event.level,
        message=event.message,
        data=event.data,
        type="metrics" if event.data.get("type") == "step" else "message",
    )


def checkpoint_public(
    job: FineTuningJobRow, ckpt: FineTuningJobCheckpointRow
) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint(
        id=f"ftckpt-{ckpt.id}",
        created_at=_epoch(ckpt.created_at) or 0,
        fine_tuned_model_checkpoint=f"ft:{job.model}:{job.suffix or 'selfinstruct'}:"
        f"{job.id}:ckpt-step-{ckpt.step}",
        step_number=ckpt.step,
        metrics=ckpt.metrics,
        fine_tuning_job_id=job.id,
    )


def file_public(record: StoredFile) -> dict[str, Any]:
    return {
        "id": record.id,
        "bytes": record.bytes,
        "created_at": _epoch(record.created_at),
        "filename": record.filename,
        "purpose": record.purpose,
        "sha256": record.sha256,
    }
