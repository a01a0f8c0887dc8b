"""Executes a claimed fine-tune job with `training/`, turning its events into rows.

The job trains in a child process (app/finetune/runner.py, training/launch.py) while this worker
holds the lease: a heartbeat renews it, the child's events are recorded as they come, and
`should_stop` is asked every second; it answers yes when the job was cancelled or taken over,
and the child then stops at its next step or is terminated. A child killed by a signal (the
out-of-memory killer's SIGKILL) fails the job saying so, and the worker takes the next one. A
job whose worker died is claimed again (at once when a supervisor saw the death, else after its
lease expires) and resumes from its last checkpoint, up to the attempt cap of app/leases.py
(`finetune_attempts`, 2: a job that killed its worker twice would kill the next one too). A
worker that is stopped on purpose hands its job back without using up an attempt. A job on
several machines is hosted here and joined by other workers (app/finetune/nodes.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app import faults
from app.finetune import nodes
from app.finetune.protocol import (
    CheckpointEvent,
    EvalEvent,
    Outcome,
    StartEvent,
    StepEvent,
    Succeeded,
    WorkerEvent,
    event_data,
    parse_event,
)
from app.finetune.runner import Heartbeat, complete_checkpoints, run_training
from app.finetune.service import add_event, artifacts_dir
from app.finetune.spec import job_spec
from app.leases import Lease, LeaseHolder, lose, release, renew
from app.models import FineTuningJobCheckpointRow, FineTuningJobRow, JobStatus, utcnow
from app.services.files import file_path
from app.settings import Settings
from training.launch import describe_exit as describe_exit  # how a process ended, in words

log = logging.getLogger("selfinstruct.finetune")


def fine_tuned_model_id(job: FineTuningJobRow) -> str:
    return f"ft:{job.model}:{job.suffix or 'selfinstruct'}:{job.id}"


def begin_attempt(engine: Engine, job_id: str, output_dir: Path | None = None) -> bool:
    """Say that training starts (or resumes); False when the claim is no longer running.

    The checkpoint named is the one the trainer resumes from: the newest complete one in
    `output_dir` when this worker sees it (a trainer may have saved one its killed worker never
    recorded), else the newest recorded (a remote worker's disk is its own).
    A claim also ends the job's wait, so the note that no worker was there goes."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(FineTuningJobRow, job_id)
        assert job is not None
        if job.status != JobStatus.running:
            return False
        job.progress = {k: v for k, v in job.progress.items() if k != "status_message"}
        if output_dir is not None:
            on_disk = complete_checkpoints(output_dir)
            resume = on_disk[-1] if on_disk else None
        else:
            resume = _latest_checkpoint(engine, job_id)
        message = f"Resuming from {resume.name}" if resume else "Fine-tuning job started"
        add_event(session, job_id, message, data={"attempt": job.lost_count + 1})
        session.add(job)
        session.commit()
        return True


def held_lease(job: FineTuningJobRow) -> Lease:
    """The lease a job's row shows now: what a supervisor or a remote worker's request acts on
    (a remote worker knows its name, not its claim's epoch)."""
    return Lease(FineTuningJobRow, job.id, job.worker_id or "", job.lease_epoch)


def worker_lost(
    engine: Engine,
    *,
    worker_prefix: str,
    how: str,
    attempts: int,
    counted: bool = True,
) -> list[str]:
    """A supervisor saw the worker whose ids start with `worker_prefix` die (`how`): hand its
    jobs back at once for a retry, or fail those at the attempt cap. `counted` False: the
    supervisor stopped the worker itself, which costs the job nothing."""
    with Session(engine) as session:
        held = session.exec(
            select(FineTuningJobRow).where(
                FineTuningJobRow.status == JobStatus.running,
                col(FineTuningJobRow.worker_id).startswith(worker_prefix, autoescape=True),
            )
        ).all()
    lost = []
    for job in held:
        lease = held_lease(job)
        if not counted:
            if release(engine, lease):
                _note(engine, job.id, STOPPED_MESSAGE)
        elif not lose(engine, lease, attempts=attempts, how=how):
            _note(
                engine,
                job.id,
                f"The worker training this job died ({how}); the job is queued again and "
                "resumes from its last checkpoint",
                level="warn",
                data={"code": "worker_lost", "attempt": job.lost_count + 1},
            )
        lost.append(job.id)
    return lost


STOPPED_MESSAGE = (
    "The worker was stopped; the job is queued again and resumes from its last checkpoint"
)


def _note(
    engine: Engine,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    with Session(engine) as session:
        add_event(session, job_id, message, level=level, data=data)
        session.commit()


def release_job(engine: Engine, lease: Lease) -> bool:
    """A worker stopping on purpose queues its job again; the claim it made does not count.

    False when the job is no longer this lease's (finished, cancelled or taken over)."""
    if not release(engine, lease):
        return False
    _note(engine, str(lease.row_id), STOPPED_MESSAGE)
    return True


def record_event(engine: Engine, job_id: str, worker_id: str, event: WorkerEvent) -> bool:
    """Store one training event (progress, metrics, checkpoints); False: the worker must stop.

    Both workers' events come here: the database worker's from training, a remote worker's
    through the HTTP route."""
    progress = _progress(engine, job_id)
    with Session(engine) as session:
        match event:
            case StepEvent():
                eta = (
                    (event.total_steps - event.step) * (event.elapsed_s or 0.0) / max(1, event.step)
                )
                progress.update(
                    step=event.step,
                    total_steps=event.total_steps,
                    epoch=event.epoch,
                    tokens_per_s=event.tokens_per_s,
                    eta_s=eta,
                    train_loss=event.train_loss,
                )
                _update(engine, job_id, worker_id, progress=progress)
            case EvalEvent():
                _update(
                    engine, job_id, worker_id, progress={**progress, "valid_loss": event.eval_loss}
                )
            case CheckpointEvent():
                metrics = {
                    "step": event.step,
                    "train_loss": progress.get("train_loss"),
                    "valid_loss": progress.get("valid_loss"),
                }
                session.add(
                    FineTuningJobCheckpointRow(
                        job_id=job_id, step=event.step, path=event.path, metrics=metrics
                    )
                )
            case StartEvent():
                long_counts = {
                    "truncated_examples": event.truncated_examples,
                    "dropped_examples": event.dropped_examples,
                }
                stats = {
                    **_job(engine, job_id).data_stats,
                    "tokens": event.train_tokens,
                    **long_counts,
                }
                _update(engine, job_id, worker_id, data_stats=stats)
                if any(long_counts.values()):
                    add_event(
                        session, job_id, _long_examples_message(long_counts), data=long_counts
                    )
        add_event(session, job_id, event.message(), data=event_data(event))
        faults.point(
            "finetune:committing" if isinstance(event, CheckpointEvent) else "finetune:running"
        )
        session.commit()
    return still_mine(engine, job_id, worker_id)


def _long_examples_message(counts: dict[str, int]) -> str:
    """Says what happened to examples over max_seq_len, so a user sees data was cut or left out."""
    return (
        f"{counts['truncated_examples']} training examples longer than max_seq_len were "
        f"truncated and {counts['dropped_examples']} were dropped (long_examples)"
    )


def still_mine(engine: Engine, job_id: str, worker_id: str) -> bool:
    current = _job(engine, job_id)
    return current.status == JobStatus.running and current.worker_id == worker_id


def execute_job(
    *,
    engine: Engine,
    settings: Settings,
    job_id: str,
    worker: LeaseHolder,
    device: str | None = None,
) -> None:
    """The database-connected worker's side of a job."""
    held = worker.lease
    assert held is not None, "a fine-tune job is executed under its claim"
    if not begin_attempt(engine, job_id, artifacts_dir(settings, job_id)):
        return
    lease = settings.worker_lease_seconds

    def on_event(event: dict[str, Any]) -> None:
        record_event(engine, job_id, worker.worker_id, parse_event(event))

    def renew_once() -> bool:
        return renew(engine, held, lease_seconds=lease)

    job = _job(engine, job_id)
    spec = job_spec(settings, engine, job)
    rendezvous = None
    if job.nodes > 1:  # this worker hosts the rendezvous the job's other nodes join
        rendezvous = nodes.host_rendezvous(engine=engine, settings=settings, lease=held, job=job)
        if rendezvous is None:
            return
    with Heartbeat(renew_once, lease) as heartbeat:
        outcome = run_training(
            spec,
            train_path=file_path(settings, spec.training_file),
            valid_path=file_path(settings, job.validation_file) if job.validation_file else None,
            output_dir=artifacts_dir(settings, job_id),
            device=device or settings.finetune_device,
            on_event=on_event,
            should_stop=lambda: (
                worker.stopping
                or heartbeat.lost
                or not still_mine(engine, job_id, worker.worker_id)
            ),
            rendezvous=rendezvous,
        )
    if rendezvous is not None:
        outcome = nodes.settle(
            engine=engine, settings=settings, lease=held, outcome=outcome, stopping=worker.stopping
        )
    if outcome is not None:
        complete_job(engine, job_id, worker.worker_id, outcome)
    elif worker.stopping:
        release_job(engine, held)


def complete_job(engine: Engine, job_id: str, worker_id: str, outcome: Outcome) -> None:
    job = _job(engine, job_id)
    if isinstance(outcome, Succeeded):
        progress = dict(job.progress or {})
        if outcome.model_dir:  # a remote worker's output, on storage the API shares
            progress["model_dir"] = outcome.model_dir
        if outcome.total_steps is not None:
            # What the trainer did in all: a resume from a checkpoint at the last step (its
            # trainer got there before the worker that recorded the steps died) reports no step.
            progress.update(step=outcome.steps, total_steps=outcome.total_steps, eta_s=0.0)
        _finish(
            engine,
            job_id,
            worker_id,
            JobStatus.succeeded,
            fine_tuned_model=fine_tuned_model_id(job),
            trained_tokens=outcome.trained_tokens,
            progress=progress,
        )
    else:
        _finish(engine, job_id, worker_id, JobStatus.failed, error=outcome.error.model_dump())


def _latest_checkpoint(engine: Engine, job_id: str) -> Path | None:
    with Session(engine) as session:
        ckpt = session.exec(
            select(FineTuningJobCheckpointRow)
            .where(FineTuningJobCheckpointRow.job_id == job_id)
            .order_by(col(FineTuningJobCheckpointRow.step).desc())
        ).first()
    return Path(ckpt.path) if ckpt else None


def _update(engine: Engine, job_id: str, worker_id: str, **fields: Any) -> bool:
    """Write fields if this worker still holds a running job; False means stop."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(FineTuningJobRow, job_id)
        if job is None or job.status != JobStatus.running or job.worker_id != worker_id:
            return False
        for key, value in fields.items():
            setattr(job, key, value)
        session.add(job)
        session.commit()
        return True


def _job(engine: Engine, job_id: str) -> FineTuningJobRow:
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(FineTuningJobRow, job_id)
        assert job is not None
        return job


def _progress(engine: Engine, job_id: str) -> dict[str, Any]:
    return dict(_job(engine, job_id).progress or {})


def _finish(engine: Engine, job_id: str, worker_id: str, status: JobStatus, **fields: Any) -> None:
    with Session(engine) as session:
        job = session.get(FineTuningJobRow, job_id)
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
        faults.point("finetune:finishing")
        session.commit()
