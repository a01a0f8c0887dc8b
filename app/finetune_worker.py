"""Executes a claimed fine-tune job with `training/`, turning its events into rows.

The lease is renewed on every training event; `should_stop` is asked before every optimizer step
and answers yes when the job was cancelled or taken over, so a cancel lands within one step. A
job whose worker died is claimed again after its lease expires and resumes from its last
checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.models import FineTuneCheckpoint, FineTuneJob, JobStatus, utcnow
from app.services.files import file_path
from app.services.finetune import add_event
from app.settings import BUNDLED_MODEL_ID, Settings
from app.worker import renew

if TYPE_CHECKING:
    from app.worker import Worker

log = logging.getLogger("selfinstruct.finetune")
MAX_ATTEMPTS = 3  # claims of one job before it fails as worker_lost


def artifacts_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_dir / "artifacts" / job_id


def fine_tuned_model_id(job: FineTuneJob) -> str:
    return f"ft:{job.model}:{job.suffix or 'selfinstruct'}:{job.id}"


def model_dir_for(settings: Settings, engine: Engine, model: str) -> str | None:
    """The Hugging Face directory of a fine-tuned model id (the merged model for LoRA)."""
    with Session(engine) as session:
        job = session.exec(
            select(FineTuneJob).where(
                FineTuneJob.fine_tuned_model == model,
                FineTuneJob.status == JobStatus.succeeded.value,
            )
        ).first()
    if job is None:
        return None
    return str(artifacts_dir(settings, job.id) / "final")


def _config(settings: Settings, engine: Engine, job: FineTuneJob, device: str) -> Any:
    from training.config import FinetuneConfig, bundled_base_model

    hyper, method = job.hyperparameters, job.method
    lora = method.get("lora")
    base = (
        str(bundled_base_model())
        if job.model == BUNDLED_MODEL_ID
        else model_dir_for(settings, engine, job.model)
    )
    kwargs: dict[str, Any] = {
        "base_model": base,
        "output_dir": str(artifacts_dir(settings, job.id)),
        "method": "lora" if lora else "full",
        "n_epochs": hyper["n_epochs"],
        "batch_size": hyper["batch_size"],
        "learning_rate_multiplier": hyper["learning_rate_multiplier"],
        "max_seq_len": method.get("max_seq_len", 1024),
        "seed": job.seed or 0,
        "device": device,
        "checkpoint_interval": method.get("checkpoint_interval", 100),
    }
    if method.get("max_steps"):
        kwargs["max_steps"] = method["max_steps"]
    if lora:
        kwargs.update(
            lora_r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            lora_target_modules=lora["target_modules"],
        )
    return FinetuneConfig(**kwargs)


def _latest_checkpoint(engine: Engine, job_id: str) -> Path | None:
    with Session(engine) as session:
        ckpt = session.exec(
            select(FineTuneCheckpoint)
            .where(FineTuneCheckpoint.job_id == job_id)
            .order_by(col(FineTuneCheckpoint.step).desc())
        ).first()
    return Path(ckpt.path) if ckpt and Path(ckpt.path).exists() else None


def _update(engine: Engine, job_id: str, worker_id: str, **fields: Any) -> bool:
    """Write fields if this worker still holds a running job; False means stop."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(FineTuneJob, job_id)
        if job is None or job.status != JobStatus.running or job.worker_id != worker_id:
            return False
        for key, value in fields.items():
            setattr(job, key, value)
        session.add(job)
        session.commit()
        return True


def execute_job(
    *, engine: Engine, settings: Settings, job_id: str, worker: Worker, device: str | None = None
) -> None:
    from training.errors import TrainingDataError, TrainingError
    from training.train import train

    with Session(engine, expire_on_commit=False) as session:
        job = session.get(FineTuneJob, job_id)
        assert job is not None
        attempts = int(job.progress.get("attempts", 0)) + 1
        job.progress = {**job.progress, "attempts": attempts}
        resume = _latest_checkpoint(engine, job_id)
        if attempts > MAX_ATTEMPTS:
            job.status, job.finished_at = JobStatus.failed, utcnow()
            job.error = {
                "code": "worker_lost",
                "param": None,
                "message": f"The job's worker stopped {MAX_ATTEMPTS} times; giving up.",
            }
        else:
            add_event(
                session,
                job_id,
                f"Resuming from {resume.name}" if resume else "Fine-tuning job started",
                data={"attempt": attempts},
            )
        session.add(job)
        session.commit()
        if job.status != JobStatus.running:
            return
    lease = settings.worker_lease_seconds
    last_renewal = time.monotonic()
    started = time.monotonic()

    def on_event(event: dict[str, Any]) -> None:
        nonlocal last_renewal
        kind = event.get("type")
        with Session(engine) as session:
            if kind == "step":
                eta = (event["total_steps"] - event["step"]) * (
                    (time.monotonic() - started) / max(1, event["step"])
                )
                progress = {
                    **_progress(engine, job_id),
                    "step": event["step"],
                    "total_steps": event["total_steps"],
                    "epoch": event.get("epoch"),
                    "tokens_per_s": event.get("tokens_per_s"),
                    "eta_s": eta,
                    "train_loss": event.get("train_loss"),
                }
                _update(engine, job_id, worker.worker_id, progress=progress)
                add_event(
                    session,
                    job_id,
                    f"Step {event['step']}/{event['total_steps']}: "
                    f"training loss={event['train_loss']:.4f}",
                    data=_plain(event),
                )
            elif kind == "eval":
                progress = {**_progress(engine, job_id), "valid_loss": event["eval_loss"]}
                _update(engine, job_id, worker.worker_id, progress=progress)
                add_event(
                    session,
                    job_id,
                    f"Step {event['step']}: validation loss={event['eval_loss']:.4f}",
                    data=_plain(event),
                )
            elif kind == "checkpoint":
                progress = _progress(engine, job_id)
                session.add(
                    FineTuneCheckpoint(
                        job_id=job_id,
                        step=event["step"],
                        path=event["path"],
                        metrics={
                            "step": event["step"],
                            "train_loss": progress.get("train_loss"),
                            "valid_loss": progress.get("valid_loss"),
                        },
                    )
                )
                add_event(
                    session, job_id, f"Checkpoint saved at step {event['step']}", data=_plain(event)
                )
            elif kind == "start":
                stats = {
                    **_job(engine, job_id).data_stats,
                    "tokens": event.get("n_train_tokens") or event.get("train_tokens"),
                }
                _update(engine, job_id, worker.worker_id, data_stats=stats)
                add_event(session, job_id, "Training started", data=_plain(event))
            session.commit()
        if time.monotonic() - last_renewal > lease / 3:
            renew(
                engine, FineTuneJob, row_id=job_id, worker_id=worker.worker_id, lease_seconds=lease
            )
            last_renewal = time.monotonic()

    def should_stop() -> bool:
        current = _job(engine, job_id)
        return (
            worker.stopping
            or current.status != JobStatus.running
            or current.worker_id != worker.worker_id
        )

    job = _job(engine, job_id)
    try:
        config = _config(settings, engine, job, device or settings.finetune_device)
        assert job.training_file is not None
        result = train(
            config,
            file_path(settings, job.training_file),
            file_path(settings, job.validation_file) if job.validation_file else None,
            on_event=on_event,
            should_stop=should_stop,
            resume_from=resume,
        )
    except Exception as exc:
        if isinstance(exc, TrainingDataError):
            code, message = "invalid_training_file", str(exc)
        elif isinstance(exc, TrainingError):
            code, message = "training_failed", str(exc)
        else:
            log.exception("fine-tune job %s failed", job_id)
            code, message = "server_error", f"{type(exc).__name__}: {exc}"
        error = {"code": code, "message": message, "param": None}
        _finish(engine, job_id, worker.worker_id, JobStatus.failed, error=error)
        return
    if result.cancelled:
        return  # the job is already cancelled (or taken over); its final state is set
    _finish(
        engine,
        job_id,
        worker.worker_id,
        JobStatus.succeeded,
        fine_tuned_model=fine_tuned_model_id(job),
        trained_tokens=result.trained_tokens,
    )


def _job(engine: Engine, job_id: str) -> FineTuneJob:
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(FineTuneJob, job_id)
        assert job is not None
        return job


def _progress(engine: Engine, job_id: str) -> dict[str, Any]:
    return dict(_job(engine, job_id).progress or {})


def _plain(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if isinstance(v, int | float | str | bool | None)}


def _finish(engine: Engine, job_id: str, worker_id: str, status: JobStatus, **fields: Any) -> None:
    with Session(engine) as session:
        job = session.get(FineTuneJob, job_id)
        if job is None or job.status != JobStatus.running or job.worker_id != worker_id:
            return
        job.status = status
        job.finished_at = utcnow()
        job.lease_expires_at = None
        for key, value in fields.items():
            setattr(job, key, value)
        message = (
            f"The job has successfully completed: {fields.get('fine_tuned_model')}"
            if status == JobStatus.succeeded
            else f"The job failed: {fields.get('error', {}).get('message')}"
        )
        add_event(
            session, job_id, message, level="info" if status == JobStatus.succeeded else "error"
        )
        session.add(job)
        session.commit()
