"""Leases: a worker claims a queued row (a run or a fine-tune job), renews the claim while it
works, and loses it on expiry, so a dead worker's row is taken up by another.

SQLite claims with a conditional UPDATE (one writer at a time makes it atomic); PostgreSQL with
`SELECT ... FOR UPDATE SKIP LOCKED`, so many workers never block on each other. This module sits
below the worker loop and the things it executes, so none of them imports another.

A worker that holds nothing leaves no trace in the database, so idle fine-tune workers also keep
a presence file under the data dir (which every database-connected fine-tune worker shares with
the API: it reads the training files and writes the models there); the API tells a job that no
worker can take it from these files and from the leases of running jobs.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from app.db import retry_transient
from app.models import Evaluation, FineTuningJobRow, JudgementJob, Run, utcnow


class LeaseHolder(Protocol):
    """What executing a claimed row needs to know of the worker that claimed it."""

    @property
    def worker_id(self) -> str: ...

    @property
    def stopping(self) -> bool: ...


Leased = type[Run] | type[FineTuningJobRow] | type[Evaluation] | type[JudgementJob]


def _claimable(model: Leased, now: object) -> sa.ColumnElement[bool]:
    return sa.or_(
        col(model.status) == "queued",
        sa.and_(col(model.status) == "running", col(model.lease_expires_at) < now),
    )


def claim(
    engine: Engine,
    model: Leased,
    *,
    worker_id: str,
    lease_seconds: float,
    row_id: object | None = None,
) -> object | None:
    """Take the oldest queued row (or `row_id`), or a running one whose lease expired.

    Runs and fine-tune jobs share this: both are rows with a status and a lease. A transient
    database error is retried (app.db.retry_transient): the claim is one transaction.
    """
    return retry_transient(
        f"claim of a {model.__name__}",
        lambda: _claim_once(engine, model, worker_id, lease_seconds, row_id),
    )


def _claim_once(
    engine: Engine, model: Leased, worker_id: str, lease_seconds: float, row_id: object | None
) -> object | None:
    now = utcnow()
    lease = now + timedelta(seconds=lease_seconds)
    order = col(FineTuningJobRow.created_at) if model is FineTuningJobRow else col(model.id)
    with engine.begin() as conn:
        pick = sa.select(col(model.id)).where(_claimable(model, now)).order_by(order).limit(1)
        if row_id is not None:
            pick = pick.where(col(model.id) == row_id)
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        picked = conn.execute(pick).scalar()
        if picked is None:
            return None
        values: dict[str, object] = {
            "status": "running",
            "worker_id": worker_id,
            "lease_expires_at": lease,
            "started_at": sa.func.coalesce(col(model.started_at), now),
        }
        if model is not FineTuningJobRow:
            values["updated_at"] = now
        claimed = conn.execute(
            sa.update(model).where(col(model.id) == picked, _claimable(model, now)).values(values)
        )
        return picked if claimed.rowcount == 1 else None


def renew(
    engine: Engine, model: Leased, *, row_id: object, worker_id: str, lease_seconds: float
) -> bool:
    """False when the row was cancelled or taken over: the worker must stop at once."""
    now = utcnow()
    with engine.begin() as conn:
        renewed = conn.execute(
            sa.update(model)
            .where(
                col(model.id) == row_id,
                col(model.worker_id) == worker_id,
                col(model.status) == "running",
            )
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        )
        return renewed.rowcount == 1


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
    engine: Engine, *, worker_id: str, lease_seconds: float, run_id: int | None = None
) -> int | None:
    picked = claim(engine, Run, worker_id=worker_id, lease_seconds=lease_seconds, row_id=run_id)
    return int(picked) if picked is not None else None  # type: ignore[call-overload]


def renew_lease(engine: Engine, *, run_id: int, worker_id: str, lease_seconds: float) -> bool:
    return renew(engine, Run, row_id=run_id, worker_id=worker_id, lease_seconds=lease_seconds)
