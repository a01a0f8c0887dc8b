"""The end of a run, or of one of its shards: once, by the lease that executed it, with the
reason, an end event and the counters as the API shows them. A shard's end ends the run with the
last one (the shards' outcome: app/leases.py `parts_outcome`)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app import faults
from app.leases import FINAL, Lease, parts_outcome
from app.models import JobPart, Run, RunEvent, RunStatus, utcnow
from app.pipeline.context import Totals
from app.pipeline.storage import counter_data
from app.schemas.runs import Caps


def finish(
    engine: Engine,
    *,
    run_id: int,
    status: RunStatus,
    stop_reason: str,
    error: str | None = None,
    lease: Lease | None = None,
) -> bool:
    """End a running run once; False when it had ended already or, given the `lease` that
    executed it, when that lease is no longer the run's (another worker took the run over after
    this one lost it: only the holder's finish lands, and the refusal is logged). A shard's
    lease ends its shard, and the run with its last one."""
    with Session(engine, expire_on_commit=False) as session:
        run = session.exec(select(Run).where(Run.id == run_id).with_for_update()).one()
        if run.status != RunStatus.running:
            return False
        if lease is not None and lease.model is JobPart:
            if not _end_shard(session, run, lease, status, stop_reason, error):
                return False
            outcome = parts_outcome(session.connection(), Run, run_id)
            if outcome is None:  # the run goes on in its other shards
                faults.point("run:finishing")
                session.commit()
                return True
            status, error = RunStatus(outcome.status), outcome.error
            stop_reason = outcome.stop_reason or outcome.status
            if run.accepted >= run.target:
                stop_reason = "target_reached"
        elif lease is not None and lease.refuses(run, f"finish ({status.value})"):
            return False
        run.status = status
        run.error = error
        run.finished_at = utcnow()
        run.updated_at = run.finished_at
        run.lease_expires_at = None
        run.state = {**run.state, "stop_reason": stop_reason, "in_flight": 0}
        session.add(run)
        session.add(
            RunEvent(
                run_id=run_id,
                kind="end",
                data={
                    "status": status.value,
                    "stop_reason": stop_reason,
                    "error": error,
                    **counter_data(run),
                },
            )
        )
        faults.point("run:finishing")
        session.commit()
    return True


def _end_shard(
    session: Session,
    run: Run,
    lease: Lease,
    status: RunStatus,
    stop_reason: str,
    error: str | None,
) -> bool:
    """End the shard `lease` holds (in the run's transaction, its row locked after the run's);
    False when it is not the lease's any more."""
    part = session.exec(select(JobPart).where(JobPart.id == lease.row_id).with_for_update()).one()
    if part.status in FINAL or lease.refuses(part, f"finish ({status.value})"):
        return False
    now = utcnow()
    part.status = status.value
    part.error = error
    part.finished_at = part.updated_at = now
    part.lease_expires_at = None
    part.state = {**part.state, "stop_reason": stop_reason, "in_flight": 0}
    session.add(part)
    data = {"shard": part.part, "status": status.value, "stop_reason": stop_reason, "error": error}
    session.add(RunEvent(run_id=int(part.job_id), kind="shard", data=data))
    session.flush()
    return True


def fail_on_error(
    engine: Engine,
    *,
    run_id: int,
    exc: Exception,
    lease: Lease | None = None,
) -> None:
    """End a run whose loop raised, naming the error."""
    finish(
        engine,
        run_id=run_id,
        status=RunStatus.failed,
        stop_reason="error",
        error=f"{type(exc).__name__}: {exc}",
        lease=lease,
    )


def cap_reached(done: Totals, caps: Caps) -> str | None:
    """The cap the committed figures (a run's, or a shard's against its share) reached."""
    if caps.max_requests is not None and done.requests >= caps.max_requests:
        return "max_requests"
    if caps.max_tokens is not None and done.tokens >= caps.max_tokens:
        return "max_tokens"
    if caps.max_cost is not None and done.cost >= caps.max_cost:
        return "max_cost"
    return None
