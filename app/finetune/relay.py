"""What the worker routes do for a remote worker: the database worker's own steps (claim,
record events, complete), plus the checks a caller on the network needs."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from app.errors import Conflict, InvalidInput
from app.finetune.protocol import Continue, JobSpec, Outcome, Succeeded, WorkerEvent
from app.finetune.service import get_job
from app.finetune.spec import job_spec
from app.finetune.worker import (
    begin_attempt,
    complete_job,
    held_lease,
    record_event,
    still_mine,
)
from app.leases import claim, mark_present, renew
from app.models import FineTuningJobRow
from app.schemas.common import ErrorItem
from app.settings import Settings


def claim_job(*, engine: Engine, settings: Settings, worker_id: str) -> JobSpec | None:
    """The oldest queued job (or one whose lease expired), claimed for `worker_id`; None when
    none is waiting. Jobs on several nodes are left to database workers: a rendezvous is
    published and joined through the database."""
    mark_present(settings.data_dir, "finetune", worker_id)  # a worker polls: it is there
    lease = claim(
        engine,
        FineTuningJobRow,
        worker_id=worker_id,
        lease_seconds=settings.worker_lease_seconds,
        attempts=settings.finetune_attempts,
        where=[col(FineTuningJobRow.nodes) == 1],
    )
    if lease is None or not begin_attempt(engine, str(lease.row_id)):
        return None
    with Session(engine) as session:
        job = session.get(FineTuningJobRow, lease.row_id)
        assert job is not None
        return job_spec(settings, engine, job)


def report_events(
    *,
    engine: Engine,
    settings: Settings,
    job_id: str,
    worker_id: str,
    events: list[WorkerEvent],
) -> Continue:
    """Record the events and renew the lease; whether the worker should go on."""
    with Session(engine) as session:
        get_job(session=session, job_id=job_id)  # 404 for an unknown job
    if not still_mine(engine, job_id, worker_id):
        return Continue(proceed=False)
    for event in events:
        record_event(engine, job_id, worker_id, event)
    with Session(engine) as session:
        job = session.get(FineTuningJobRow, job_id)
        assert job is not None
        lease = held_lease(job)
    renewed = lease.owner == worker_id and renew(
        engine, lease, lease_seconds=settings.worker_lease_seconds
    )
    return Continue(proceed=renewed)


def complete(
    *,
    session: Session,
    engine: Engine,
    settings: Settings,
    job_id: str,
    worker_id: str,
    outcome: Outcome,
) -> FineTuningJobRow:
    """Finish the job with the worker's outcome; Conflict when it is no longer this worker's."""
    job = get_job(session=session, job_id=job_id)
    if not still_mine(engine, job_id, worker_id):
        raise Conflict(f"Job '{job_id}' is not held by worker '{worker_id}' any more.")
    if isinstance(outcome, Succeeded) and outcome.model_dir is not None:
        _inside_data_dir(settings.data_dir, outcome.model_dir, "outcome.model_dir")
    complete_job(engine, job_id, worker_id, outcome)
    session.refresh(job)
    return job


def _inside_data_dir(data_dir: Path, reported: str, field: str) -> None:
    """The API later loads a tuned model from the reported folder; a worker must not be able to
    point it at any other place on the API's disk (`/etc`, `../..`, a symlink out)."""
    root = data_dir.resolve()
    target = Path(reported)
    target = (target if target.is_absolute() else Path.cwd() / target).resolve()
    if not target.is_relative_to(root):
        raise InvalidInput(
            f"{field} must be a folder inside the API's data dir ({root}), on storage the API "
            f"mounts at the same path; got '{reported}'.",
            errors=[ErrorItem(field=field, reason="outside the data dir")],
        )
