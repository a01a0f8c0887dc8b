"""Fine-tune jobs on several machines (`nodes` > 1): one torchrun per node, meeting at a c10d
rendezvous, as Slurm and Kubernetes clusters run it.

- **The host (node 0)** is the worker that claimed the job, and it keeps the job's lease. Before
  training it picks a port, then publishes the rendezvous (its `endpoint`, an id new for each
  attempt, the checkpoint it resumes from) in the state of the job's other nodes: parts of the
  job (app/leases.py `JobPart`), queued anew at every attempt. Its torchrun serves the
  rendezvous; its processes report the job as on one machine.
- **The other nodes** are those parts, claimed by other fine-tune workers that look for them
  before they look for jobs; each renews its own part's lease and runs torchrun joining the
  host's endpoint. A part is never claimed twice in one attempt: its worker's death ends the
  attempt (`attempts=1` fails an expired part instead).
- **How an attempt ends** is the host's call (`settle`): a node that did not join within
  SELFINSTRUCT_RENDEZVOUS_TIMEOUT_S fails the job, saying which; a node lost while training
  (killed, out of memory, machine or network gone) hands the job back as a lost worker does,
  counted against SELFINSTRUCT_FINETUNE_ATTEMPTS, and it resumes on all its nodes from its last
  checkpoint; a node stopped on purpose queues it again at no cost.

Every node's worker shares the database and the data folder (training files, checkpoints and the
model live there), as every database-connected fine-tune worker does.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.finetune.protocol import Failed, JobErrorReport, Outcome, Succeeded
from app.finetune.runner import Heartbeat, complete_checkpoints, run_training
from app.finetune.service import add_event, artifacts_dir
from app.finetune.spec import job_spec
from app.leases import (
    FINAL,
    Lease,
    LeaseHolder,
    add_parts,
    claim,
    kind_slug,
    lose,
    part_of,
    release,
    renew,
)
from app.models import FineTuningJobRow, JobPart, JobStatus, utcnow
from app.services.files import file_path
from app.settings import Settings
from training.launch import Rendezvous

log = logging.getLogger("selfinstruct.finetune")


def node_address(settings: Settings) -> str:
    """The address other nodes reach this worker at (SELFINSTRUCT_NODE_ADDRESS)."""
    return settings.node_address or socket.gethostname()


def _port(settings: Settings) -> int:
    """SELFINSTRUCT_RENDEZVOUS_PORT, or one free now (torchrun binds it a moment later)."""
    if settings.rendezvous_port:
        return settings.rendezvous_port
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def host_rendezvous(
    *, engine: Engine, settings: Settings, lease: Lease, job: FineTuningJobRow
) -> Rendezvous | None:
    """Node 0: publish this attempt's rendezvous to the job's other nodes; None when the job is
    no longer this lease's."""
    address = node_address(settings)
    endpoint = f"{address}:{_port(settings)}"
    checkpoints = complete_checkpoints(artifacts_dir(settings, job.id))
    state = {
        "endpoint": endpoint,
        "run_id": f"{job.id}-{lease.epoch}",
        "resume": checkpoints[-1].name if checkpoints else None,
        "host": lease.owner,
    }
    now = utcnow()
    with Session(engine) as session:
        row = session.get(FineTuningJobRow, job.id, with_for_update=True)
        if row is None or not lease.holds(row):
            return None
        where = part_of(FineTuningJobRow, job.id)
        if session.exec(select(JobPart.id).where(*where)).first() is None:
            add_parts(session, FineTuningJobRow, job.id, job.nodes - 1)
            session.flush()
        # queued anew: a worker still holding a part of the last attempt loses it (fenced)
        session.connection().execute(
            sa.update(JobPart)
            .where(*where)
            .values(
                status="queued",
                worker_id=None,
                lease_expires_at=None,
                lost_count=0,
                progressed=False,
                error=None,
                state=state,
                started_at=None,
                finished_at=None,
                updated_at=now,
            )
        )
        add_event(
            session,
            job.id,
            f"Waiting for {job.nodes - 1} more node(s) to join the rendezvous at {endpoint} "
            f"(SELFINSTRUCT_RENDEZVOUS_TIMEOUT_S={settings.rendezvous_timeout_s:g})",
            data={"code": "rendezvous", "endpoint": endpoint, "nodes": job.nodes},
        )
        session.commit()
    return Rendezvous(
        endpoint=endpoint,
        run_id=str(state["run_id"]),
        nodes=job.nodes,
        host=True,
        local_addr=address,
        timeout_s=settings.rendezvous_timeout_s,
    )


def claim_node(engine: Engine, settings: Settings, worker_id: str) -> Lease | None:
    """The oldest waiting node of a running job on several machines, claimed for `worker_id`."""
    running = select(FineTuningJobRow.id).where(
        FineTuningJobRow.status == JobStatus.running, col(FineTuningJobRow.nodes) > 1
    )
    return claim(
        engine,
        JobPart,
        worker_id=worker_id,
        lease_seconds=settings.worker_lease_seconds,
        attempts=1,
        where=[col(JobPart.kind) == kind_slug(FineTuningJobRow), col(JobPart.job_id).in_(running)],
    )


def execute_node(
    *, engine: Engine, settings: Settings, worker: LeaseHolder, device: str | None = None
) -> None:
    """A node other than the host: join the rendezvous and train until the job's end."""
    lease = worker.lease
    assert lease is not None and lease.model is JobPart
    with Session(engine, expire_on_commit=False) as session:
        part = session.get(JobPart, lease.row_id)
        assert part is not None
        job = session.get(FineTuningJobRow, part.job_id)
        assert job is not None
    node, state = part.part + 1, part.state
    output_dir = artifacts_dir(settings, job.id)
    problem = _unshared(settings, job, state, output_dir)
    if problem is not None:
        _end_part(engine, lease, "failed", problem)
        _note(engine, job.id, f"Node {node} cannot train this job: {problem}", level="error")
        return
    address = node_address(settings)
    _note(engine, job.id, f"Node {node} joins the rendezvous from worker {worker.worker_id}")
    spec = job_spec(settings, engine, job)
    rendezvous = Rendezvous(
        endpoint=state["endpoint"],
        run_id=state["run_id"],
        nodes=job.nodes,
        host=False,
        local_addr=address,
        timeout_s=settings.rendezvous_timeout_s,
    )
    seconds = settings.worker_lease_seconds
    with Heartbeat(lambda: renew(engine, lease, lease_seconds=seconds), seconds) as heartbeat:
        outcome = run_training(
            spec,
            train_path=file_path(settings, spec.training_file),
            valid_path=file_path(settings, job.validation_file) if job.validation_file else None,
            output_dir=output_dir,
            device=device or settings.finetune_device,
            on_event=lambda event: None,  # the host reports the job
            should_stop=lambda: worker.stopping or heartbeat.lost,
            rendezvous=rendezvous,
        )
    if isinstance(outcome, Failed):
        _end_part(engine, lease, "failed", f"{outcome.error.code}: {outcome.error.message}")
    elif worker.stopping:
        _end_part(engine, lease, "cancelled", "its worker was stopped")
    else:
        _end_part(engine, lease, "succeeded")


def _unshared(
    settings: Settings, job: FineTuningJobRow, state: dict[str, Any], output_dir: Path
) -> str | None:
    """Why this worker cannot train the part the host published, if it cannot: every node must
    read the same training file and resume from the same checkpoint."""
    needed = [file_path(settings, f) for f in (job.training_file, job.validation_file) if f]
    missing = [str(path) for path in needed if not path.is_file()]
    checkpoints = complete_checkpoints(output_dir)
    resume = checkpoints[-1].name if checkpoints else None
    if not missing and resume == state.get("resume"):
        return None
    seen = f"cannot read {', '.join(missing)}" if missing else f"sees checkpoint {resume}"
    return (
        f"this worker {seen}, where the host resumes from {state.get('resume')}: every node's "
        "worker must share the data folder (SELFINSTRUCT_DATA_DIR) with the others."
    )


def settle(
    *,
    engine: Engine,
    settings: Settings,
    lease: Lease,
    outcome: Outcome | None,
    stopping: bool,
) -> Outcome | None:
    """Node 0, after an attempt: what its end means for the job (see the module doc). Returns
    the outcome to complete the job with; None when the job was handed back (or stopped)."""
    job_id = str(lease.row_id)
    if isinstance(outcome, Failed) and outcome.error.code == "rendezvous_timeout":
        message = f"{outcome.error.message}: {_who_did_not_join(engine, job_id)}"
        outcome = Failed(
            status="failed", error=JobErrorReport(code="rendezvous_timeout", message=message)
        )
    status = "succeeded" if isinstance(outcome, Succeeded) else "failed" if outcome else "cancelled"
    _end_parts(engine, job_id, status)
    if isinstance(outcome, Failed) and outcome.error.code == "node_lost":
        how = f"a node of the job was lost: {outcome.error.message}"
        if not lose(engine, lease, attempts=settings.finetune_attempts, how=how):
            _note(
                engine,
                job_id,
                f"A node of this job was lost ({outcome.error.message}); the job is queued "
                "again and resumes on all its nodes from its last checkpoint",
                level="warn",
                data={"code": "node_lost"},
            )
        return None
    if outcome is None and not stopping and release(engine, lease):
        _note(
            engine,
            job_id,
            "A node of this job was stopped; the job is queued again and resumes from its last "
            "checkpoint",
        )
    return outcome


def _who_did_not_join(engine: Engine, job_id: str) -> str:
    """Each node that kept the rendezvous waiting, and why when its worker said."""
    with Session(engine) as session:
        parts = session.exec(
            select(JobPart).where(*part_of(FineTuningJobRow, job_id)).order_by(col(JobPart.part))
        ).all()
    reasons = []
    for part in parts:
        node = part.part + 1
        if part.worker_id is None:
            reasons.append(
                f"node {node} was not taken by any fine-tune worker; start one more "
                "`selfinstruct worker --kind finetune` per node (SELFINSTRUCT_RENDEZVOUS_TIMEOUT_S "
                "sets the wait)"
            )
        elif part.error:
            reasons.append(f"node {node} (worker {part.worker_id}) failed: {part.error}")
        else:
            reasons.append(
                f"node {node} (worker {part.worker_id}) did not reach it; check that it can "
                "reach the endpoint (SELFINSTRUCT_NODE_ADDRESS, SELFINSTRUCT_RENDEZVOUS_PORT)"
            )
    return "; ".join(reasons) or "no node was published"


def _end_part(engine: Engine, lease: Lease, status: str, error: str | None = None) -> None:
    """A node's own end of its part, if the part is still its lease's."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.update(JobPart)
            .where(lease.held())
            .values(
                status=status, error=error, finished_at=now, updated_at=now, lease_expires_at=None
            )
        )


def _end_parts(engine: Engine, job_id: str, status: str) -> None:
    """The attempt is over: no worker may still claim one of its nodes (a new attempt publishes
    them again); their holders stop at their next renewal."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.update(JobPart)
            .where(*part_of(FineTuningJobRow, job_id), col(JobPart.status).not_in(FINAL))
            .values(status=status, finished_at=now, updated_at=now, lease_expires_at=None)
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
