"""Leases: a worker claims a queued row (a run or a fine-tune job), renews the claim while it
works, and loses it on expiry, so a dead worker's row is taken up by another.

SQLite claims with a conditional UPDATE (one writer at a time makes it atomic); PostgreSQL with
`SELECT ... FOR UPDATE SKIP LOCKED`, so many workers never block on each other. This module sits
below the worker loop and the things it executes, so none of them imports another.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from app.models import FineTuningJobRow, Run, utcnow


class LeaseHolder(Protocol):
    """What executing a claimed row needs to know of the worker that claimed it."""

    @property
    def worker_id(self) -> str: ...

    @property
    def stopping(self) -> bool: ...


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


Leased = type[Run] | type[FineTuningJobRow]


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

    Runs and fine-tune jobs share this: both are rows with a status and a lease.
    """
    now = utcnow()
    lease = now + timedelta(seconds=lease_seconds)
    order = col(model.id) if model is Run else col(FineTuningJobRow.created_at)
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
        if model is Run:
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


def claim_run(
    engine: Engine, *, worker_id: str, lease_seconds: float, run_id: int | None = None
) -> int | None:
    picked = claim(engine, Run, worker_id=worker_id, lease_seconds=lease_seconds, row_id=run_id)
    return int(picked) if picked is not None else None  # type: ignore[call-overload]


def renew_lease(engine: Engine, *, run_id: int, worker_id: str, lease_seconds: float) -> bool:
    return renew(engine, Run, row_id=run_id, worker_id=worker_id, lease_seconds=lease_seconds)
