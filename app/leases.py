"""One machinery for every kind of background job: runs, judgement jobs, evaluations and
fine-tunes are claimed, renewed, released, fenced and capped here, alike.

- **Claim** takes the oldest queued row, or a running one whose lease ran out (its holder died).
  SQLite claims with a conditional UPDATE (one writer at a time makes it atomic); PostgreSQL with
  `SELECT ... FOR UPDATE SKIP LOCKED`, so workers never block on each other. Each claim raises
  the row's `lease_epoch`: the (worker id, epoch) pair is the lease, a fencing token.
- **Renew** and every write a holder makes are fenced by that pair: once another worker took the
  row over (or it was cancelled), the stale holder's renewals, commits and finish are refused.
- **The attempt cap.** Taking over an expired lease counts a lost holder unless it committed
  progress since its claim (`progressed`, set in the same transaction as the progress); when the
  count reaches the kind's cap (`job_attempts`, `finetune_attempts`) the job fails as
  `worker_lost` instead of being claimed again. A graceful stop releases the row (`release`),
  which costs nothing.
- **Fair claiming**: a worker that executes several kinds takes the oldest waiting job of all of
  them (`claim_next`), so no kind waits behind another for ever.

This module sits below the worker loop and the things it executes, so none of them imports
another. A worker that holds nothing leaves no trace in the database, so idle fine-tune workers
also keep a presence file under the data dir (which every database-connected fine-tune worker
shares with the API); the API tells a job that no worker can take it from these files and from
the leases of running jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, SQLModel, col

from app.db import retry_transient
from app.models import (
    Evaluation,
    EvaluationEvent,
    FineTuningJobEventRow,
    FineTuningJobRow,
    JobPart,
    JudgementEvent,
    JudgementJob,
    Recipe,
    RecipeEvent,
    Run,
    RunEvent,
    utcnow,
)

log = logging.getLogger("selfinstruct.leases")

Leased = (
    type[Run]
    | type[FineTuningJobRow]
    | type[Evaluation]
    | type[JudgementJob]
    | type[JobPart]
    | type[Recipe]
)
RUNNING = "running"


@dataclass(frozen=True)
class Lease:
    """A worker's hold on one job row; `epoch` is the claim's fencing token."""

    model: Leased
    row_id: Any
    owner: str
    epoch: int

    def holds(self, row: Any) -> bool:
        """Whether a row read in a transaction is still this lease's (not cancelled, not ended,
        not taken over)."""
        return bool(
            row.status == RUNNING and row.worker_id == self.owner and row.lease_epoch == self.epoch
        )

    def refuses(self, row: Any, action: str) -> bool:
        """Whether a write this lease's holder is about to make to a running `row` (read under
        its lock) must be refused: the row is another lease's now. The refusal is logged."""
        if row.status != RUNNING or self.holds(row):
            return False
        log.warning(
            "%s %s: the %s of worker %s is refused: worker %s holds it now (claim %s)",
            kind_name(self.model),
            self.row_id,
            action,
            self.owner,
            row.worker_id,
            row.lease_epoch,
        )
        return True

    def held(self) -> sa.ColumnElement[bool]:
        """The same as a WHERE clause, for conditional UPDATEs."""
        m = self.model
        return sa.and_(
            col(m.id) == self.row_id,
            col(m.status) == RUNNING,
            col(m.worker_id) == self.owner,
            col(m.lease_epoch) == self.epoch,
        )


class LeaseHolder(Protocol):
    """What executing a claimed row needs to know of the worker that claimed it."""

    @property
    def worker_id(self) -> str: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def lease(self) -> Lease | None: ...


class Kind(NamedTuple):
    """How a kind of job is named in messages (`name`) and in fault points and logs (`slug`)."""

    name: str
    slug: str


KINDS: dict[Leased, Kind] = {
    Run: Kind("run", "run"),
    JudgementJob: Kind("judgement job", "judgement"),
    Evaluation: Kind("evaluation", "evaluation"),
    FineTuningJobRow: Kind("fine-tune job", "finetune"),
    JobPart: Kind("part of a job", "part"),
    Recipe: Kind("recipe", "recipe"),
}


def kind_name(model: Leased) -> str:
    return KINDS[model].name


def kind_slug(model: Leased) -> str:
    """The kind's name in fault points and logs (app/faults.py)."""
    return KINDS[model].slug


def _order(model: Leased) -> Any:
    return col(FineTuningJobRow.created_at) if model is FineTuningJobRow else col(model.id)


def _claimable(model: Leased, now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        col(model.status) == "queued",
        sa.and_(col(model.status) == RUNNING, col(model.lease_expires_at) < now),
    )


def claim(
    engine: Engine,
    model: Leased,
    *,
    worker_id: str,
    lease_seconds: float,
    attempts: int,
    row_id: object | None = None,
    where: Sequence[sa.ColumnElement[bool]] = (),
) -> Lease | None:
    """Take the oldest queued row (or `row_id`, or the oldest matching `where`: the parts of
    one job), or a running one whose lease expired.

    A row whose lost holders reach `attempts` fails as `worker_lost` on the way and the next
    one is tried. A transient database error is retried (app.db.retry_transient): each try is
    one transaction.
    """
    while True:
        lease, failed = retry_transient(
            f"claim of a {kind_name(model)}",
            lambda: _claim_once(engine, model, worker_id, lease_seconds, attempts, row_id, where),
        )
        if lease is not None or not failed or row_id is not None:
            return lease  # else a row failed at the cap on the way: look at the next


def _claim_once(
    engine: Engine,
    model: Leased,
    worker_id: str,
    lease_seconds: float,
    attempts: int,
    row_id: object | None,
    where: Sequence[sa.ColumnElement[bool]] = (),
) -> tuple[Lease | None, bool]:
    now = utcnow()
    m = model
    with engine.begin() as conn:
        pick = (
            sa.select(
                col(m.id), col(m.status), col(m.lease_epoch), col(m.lost_count), col(m.progressed)
            )
            .where(_claimable(m, now))
            .order_by(_order(m))
            .limit(1)
        )
        if row_id is not None:
            pick = pick.where(col(m.id) == row_id)
        if where:
            pick = pick.where(*where)
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        picked = conn.execute(pick).first()
        if picked is None:
            return None, False
        picked_id, status, epoch, lost, progressed = picked
        # The row as it was read: on SQLite another worker may have claimed it meanwhile.
        same = sa.and_(col(m.id) == picked_id, _claimable(m, now), col(m.lease_epoch) == epoch)
        if status == RUNNING:  # its holder's lease ran out: the holder is lost
            lost = 0 if progressed else lost + 1
            if lost >= attempts:
                if _fail_lost(conn, m, picked_id, same, lost, now):
                    log.warning("%s %s failed: worker lost %s times", kind_name(m), picked_id, lost)
                return None, True
        values: dict[str, object] = {
            "status": RUNNING,
            "worker_id": worker_id,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "lease_epoch": epoch + 1,
            "lost_count": lost,
            "progressed": False,
            "started_at": sa.func.coalesce(col(m.started_at), now),
        }
        if m is not FineTuningJobRow:
            values["updated_at"] = now
        claimed = conn.execute(sa.update(m).where(same).values(values))
        if claimed.rowcount != 1:
            return None, False
        return Lease(model=m, row_id=picked_id, owner=worker_id, epoch=epoch + 1), False


EXPIRED = "its lease ran out without a renewal"
OOM_ADVICE = (
    " A job that runs out of memory needs a smaller batch_size or max_seq_len, LoRA, or a "
    "machine with more memory."
)


def lost_message(model: Leased, count: int, how: str = EXPIRED) -> str:
    times = {1: "once", 2: "twice"}.get(count, f"{count} times")
    message = (
        f"The worker executing this {kind_name(model)} died {times} (last: {how}) with no "
        "progress committed since its claim; it is not tried again."
    )
    return message + (OOM_ADVICE if model is FineTuningJobRow else "")


def _fail_lost(
    conn: Connection,
    model: Leased,
    row_id: object,
    same: sa.ColumnElement[bool],
    lost: int,
    now: datetime,
    how: str = EXPIRED,
) -> bool:
    """End a row whose holders kept dying, with the count, in the claim's transaction."""
    message = lost_message(model, lost, how)
    values: dict[str, Any] = {
        "status": "failed",
        "lost_count": lost,
        "lease_expires_at": None,
        "finished_at": now,
    }
    if model is FineTuningJobRow:
        values["error"] = {"code": "worker_lost", "param": None, "message": message}
    else:
        values["error"] = f"worker_lost: {message}"
        values["updated_at"] = now
    if model is Run:
        state = conn.execute(sa.select(col(Run.state)).where(col(Run.id) == row_id)).scalar()
        values["state"] = {**(state or {}), "stop_reason": "worker_lost", "in_flight": 0}
    elif model in (JudgementJob, Recipe):
        values["stop_reason"] = "worker_lost"
    if conn.execute(sa.update(model).where(same).values(values)).rowcount != 1:
        return False
    if model is JobPart:  # a run ends once its last shard has; other kinds decide themselves
        kind, job_id = conn.execute(
            sa.select(col(JobPart.kind), col(JobPart.job_id)).where(col(JobPart.id) == row_id)
        ).one()
        if kind == kind_slug(Run):
            _end_run_of_parts(conn, int(job_id), now)
        return True
    end = {"status": "failed", "stop_reason": "worker_lost", "error": message, "lost": lost}
    kind = f"The job failed: {message}" if model is FineTuningJobRow else "end"
    event = job_event(model, row_id, kind, end)
    conn.execute(sa.insert(type(event)).values(**event.model_dump(exclude_none=True)))
    return True


FINAL = frozenset({"succeeded", "failed", "cancelled"})  # every kind's final statuses


class Outcome(NamedTuple):
    """How a job held in parts ended, once every part has."""

    status: str
    stop_reason: str | None
    error: str | None


def parts_outcome(conn: Connection, model: Leased, job_id: object) -> Outcome | None:
    """None while a part of the job is not final. Else: failed with the first failed part's
    error, or cancelled, or succeeded with the parts' stop reason (the first that is not
    `target_reached`, when they differ)."""
    rows = conn.execute(
        sa.select(col(JobPart.part), col(JobPart.status), col(JobPart.error), col(JobPart.state))
        .where(*part_of(model, job_id))
        .order_by(col(JobPart.part))
    ).all()
    if not rows or any(status not in FINAL for _, status, _, _ in rows):
        return None
    for part, status, error, state in rows:
        if status == "failed":
            reason = (state or {}).get("stop_reason") or str(error or "").split(":")[0] or None
            return Outcome("failed", reason, f"shard {part}: {error}")
    if any(status == "cancelled" for _, status, _, _ in rows):
        return Outcome("cancelled", "cancelled", None)
    reasons = [(state or {}).get("stop_reason") for _, _, _, state in rows]
    other = [r for r in reasons if r and r != "target_reached"]
    return Outcome("succeeded", other[0] if other else "target_reached", None)


def _end_run_of_parts(conn: Connection, run_id: int, now: datetime) -> None:
    """A run of several shards whose last shard failed on a claim (its workers kept dying)
    ends here, as a whole run does then: with the reason, and an end event."""
    outcome = parts_outcome(conn, Run, run_id)
    if outcome is None:
        return
    state = conn.execute(
        sa.select(col(Run.state)).where(col(Run.id) == run_id, col(Run.status) == RUNNING)
    ).scalar()
    if state is None:
        return
    conn.execute(
        sa.update(Run)
        .where(col(Run.id) == run_id)
        .values(
            status=outcome.status,
            error=outcome.error,
            finished_at=now,
            updated_at=now,
            state={**state, "stop_reason": outcome.stop_reason, "in_flight": 0},
        )
    )
    end = {"status": outcome.status, "stop_reason": outcome.stop_reason, "error": outcome.error}
    conn.execute(sa.insert(RunEvent).values(run_id=run_id, kind="end", data=end, created_at=now))


def job_event(model: Leased, row_id: Any, kind: str, data: dict[str, Any]) -> SQLModel:
    """An event of a job, in its kind's own table (what its event stream reads). Fine-tune
    events are OpenAI-shaped: a message, with `kind` as the message."""
    if model is Run:
        return RunEvent(run_id=row_id, kind=kind, data=data)
    if model is JudgementJob:
        return JudgementEvent(judgement_job_id=row_id, kind=kind, data=data)
    if model is Evaluation:
        return EvaluationEvent(evaluation_id=row_id, kind=kind, data=data)
    if model is Recipe:
        return RecipeEvent(recipe_id=row_id, kind=kind, data=data)
    level = "error" if data.get("status") == "failed" else "info"
    return FineTuningJobEventRow(job_id=row_id, level=level, message=kind, data=data)


# The event each kind's stream has always ended a cancel with.
CANCEL_EVENT: dict[Leased, str] = {
    Run: "status",
    JudgementJob: "status",
    Evaluation: "end",
    FineTuningJobRow: "Job cancelled",
    Recipe: "end",
}


def cancel(session: Session, row: Any) -> Any:
    """Cancel a queued or running job of any kind; idempotent (a final state never changes).
    The row is locked first: its holder may be committing. The holder sees the status at its
    next commit or renewal (its lease no longer holds) and stops, storing nothing more."""
    model = type(row)
    session.refresh(row, with_for_update=True)
    if row.status in FINAL:
        return row
    now = utcnow()
    row.status = "cancelled"
    row.finished_at = now
    row.lease_expires_at = None
    if model is not FineTuningJobRow:
        row.updated_at = now
    if model is Run:
        row.state = {**row.state, "stop_reason": "cancelled"}
    elif model in (JudgementJob, Recipe):
        row.stop_reason = "cancelled"
    session.add(row)
    if model is not JobPart:  # its parts end with it: their holders stop at their next renewal
        session.connection().execute(
            sa.update(JobPart)
            .where(
                col(JobPart.kind) == kind_slug(model),
                col(JobPart.job_id) == str(row.id),
                col(JobPart.status).not_in(FINAL),
            )
            .values(status="cancelled", finished_at=now, updated_at=now, lease_expires_at=None)
        )
    data = {"status": "cancelled"} if model is not FineTuningJobRow else {}
    if model in CANCEL_EVENT:  # a part has no events of its own
        session.add(job_event(model, row.id, CANCEL_EVENT[model], data))
    session.commit()
    session.refresh(row)
    return row


def add_parts(
    session: Session,
    model: Leased,
    job_id: object,
    count: int,
    *,
    states: Sequence[dict[str, Any]] | None = None,
) -> None:
    """Queue `count` parts of a job (0 to count-1), each to be claimed on its own lease with
    `claim(engine, JobPart, ..., where=part_of(model, job_id))`; `states`: each part's own."""
    kind = kind_slug(model)
    session.add_all(
        JobPart(kind=kind, job_id=str(job_id), part=i, state=dict(states[i]) if states else {})
        for i in range(count)
    )


def part_of(model: Leased, job_id: object | None = None) -> list[sa.ColumnElement[bool]]:
    """The `where` that claims only the parts of one job (or of every job of a kind)."""
    where = [col(JobPart.kind) == kind_slug(model)]
    if job_id is not None:
        where.append(col(JobPart.job_id) == str(job_id))
    return where


def claim_next(
    engine: Engine,
    models: Sequence[Leased],
    *,
    worker_id: str,
    lease_seconds: float,
    attempts: Callable[[Leased], int],
    where: Mapping[Leased, Sequence[sa.ColumnElement[bool]]] | None = None,
) -> Lease | None:
    """The oldest waiting job of any of `models` (by creation time), so no kind starves;
    `where` narrows a kind (runs of one shard, parts of runs)."""
    narrow = where or {}
    for _ in range(8):  # another worker may take the pick first: look again
        now = utcnow()
        waiting: list[tuple[datetime, int, Leased]] = []
        with engine.connect() as conn:
            for rank, model in enumerate(models):
                oldest = conn.execute(
                    sa.select(col(model.created_at))
                    .where(_claimable(model, now), *narrow.get(model, ()))
                    .order_by(_order(model))
                    .limit(1)
                ).scalar()
                if oldest is not None:
                    waiting.append((oldest, rank, model))
        if not waiting:
            return None
        for _, _, model in sorted(waiting, key=lambda w: (w[0], w[1])):
            lease = claim(
                engine,
                model,
                worker_id=worker_id,
                lease_seconds=lease_seconds,
                attempts=attempts(model),
                where=narrow.get(model, ()),
            )
            if lease is not None:
                return lease
    return None


def renew(engine: Engine, lease: Lease, *, lease_seconds: float) -> bool:
    """False when the row was cancelled, ended or taken over: the holder must stop at once."""
    with engine.begin() as conn:
        renewed = conn.execute(
            sa.update(lease.model)
            .where(lease.held())
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        )
        return renewed.rowcount == 1


def release(engine: Engine, lease: Lease) -> bool:
    """A graceful stop: the row is queued again at once, and the claim costs it nothing."""
    values: dict[str, object] = {"status": "queued", "worker_id": None, "lease_expires_at": None}
    with engine.begin() as conn:
        released = conn.execute(sa.update(lease.model).where(lease.held()).values(values))
        return released.rowcount == 1


def lose(engine: Engine, lease: Lease, *, attempts: int, how: str) -> bool:
    """A supervisor saw the holder die (`how`): count it now instead of when the lease runs
    out, and queue the row again at once, or fail it at the cap. True when it failed."""
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(col(lease.model.lost_count), col(lease.model.progressed)).where(lease.held())
        ).first()
        if row is None:
            return False
        lost = 0 if row.progressed else row.lost_count + 1
        if lost >= attempts:
            return _fail_lost(conn, lease.model, lease.row_id, lease.held(), lost, utcnow(), how)
        conn.execute(
            sa.update(lease.model)
            .where(lease.held())
            .values(status="queued", worker_id=None, lease_expires_at=None, lost_count=lost)
        )
        log.warning(
            "%s %s: its worker died (%s); queued again", kind_name(lease.model), lease.row_id, how
        )
        return False


def progressed() -> dict[str, object]:
    """Values to write with a committed piece of progress: the holder's death after it does
    not count toward the attempt cap."""
    return {"progressed": True}


@dataclass
class Keeper:
    """Renews a lease on its own clock while the work runs; `lost` once a renewal is refused."""

    engine: Engine
    lease: Lease
    lease_seconds: float
    lost: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def kept(engine: Engine, lease: Lease, *, lease_seconds: float) -> AsyncIterator[Keeper]:
    """Renew `lease` every third of its length in the background; a database hiccup is
    retried at the next beat (the lease has a while to run)."""
    keeper = Keeper(engine, lease, lease_seconds)

    async def beat() -> None:
        while True:
            await asyncio.sleep(lease_seconds / 3)
            try:
                if not await asyncio.to_thread(renew, engine, lease, lease_seconds=lease_seconds):
                    keeper.lost.set()
                    return
            except Exception:
                log.warning(
                    "%s %s: lease renewal failed; retrying",
                    kind_name(lease.model),
                    lease.row_id,
                    exc_info=True,
                )

    task = asyncio.create_task(beat())
    try:
        yield keeper
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- presence of idle workers ---

PRESENCE_INTERVAL_S = 5.0  # how often a worker refreshes its presence file
PRESENCE_STALE_S = 60.0  # a file older than this belongs to a worker that is gone


def presence_dir(data_dir: Path, kind: str) -> Path:
    return data_dir / "workers" / kind


def _presence_file(data_dir: Path, kind: str, worker_id: str) -> Path:
    # A remote worker names itself: keep its id to a plain file name inside the folder.
    name = re.sub(r"[^A-Za-z0-9_.:-]", "_", worker_id)[:200]
    return presence_dir(data_dir, kind) / (f"_{name}" if name.strip(".") == "" else name)


def mark_present(data_dir: Path, kind: str, worker_id: str) -> bool:
    """Record that `worker_id` is alive and polling now (the file's mtime is the time); False
    when the data folder cannot be written (the worker works on, only unseen)."""
    path = _presence_file(data_dir, kind, worker_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError:
        return False
    return True


def mark_gone(data_dir: Path, kind: str, worker_id: str) -> None:
    _presence_file(data_dir, kind, worker_id).unlink(missing_ok=True)


def present_workers(data_dir: Path, kind: str, *, stale_s: float = PRESENCE_STALE_S) -> list[str]:
    """Ids of workers of `kind` seen within `stale_s`; older files are removed on the way."""
    folder = presence_dir(data_dir, kind)
    if not folder.is_dir():
        return []
    now, seen = time.time(), []
    for path in folder.iterdir():
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:  # its worker stopped while we looked
            continue
        if age <= stale_s:
            seen.append(path.name)
        elif age > 24 * 3600:
            path.unlink(missing_ok=True)
    return seen


def held_rows(engine: Engine, model: Leased) -> list[tuple[object, str]]:
    """(row id, worker id) of rows running under a lease that has not expired."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(col(model.id), col(model.worker_id)).where(
                col(model.status) == "running", col(model.lease_expires_at) >= utcnow()
            )
        )
        return [(row_id, str(worker)) for row_id, worker in rows]


def claim_run(
    engine: Engine,
    *,
    worker_id: str,
    lease_seconds: float,
    attempts: int,
    run_id: int | None = None,
) -> Lease | None:
    return claim(
        engine,
        Run,
        worker_id=worker_id,
        lease_seconds=lease_seconds,
        attempts=attempts,
        row_id=run_id,
    )
