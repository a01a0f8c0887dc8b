"""Workers claim queued runs with a lease, renew it while they work, and give up on expiry.

SQLite claims with a conditional UPDATE (one writer at a time makes it atomic); PostgreSQL with
`SELECT ... FOR UPDATE SKIP LOCKED`, so many workers never block on each other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from app.models import FineTuneJob, Run, utcnow
from app.settings import Settings

log = logging.getLogger("selfinstruct.worker")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


Leased = type[Run] | type[FineTuneJob]


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
    order = col(model.id) if model is Run else col(FineTuneJob.created_at)
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


class Worker:
    """Claims runs one at a time and executes them; `stop` ends the loop between runs."""

    def __init__(
        self,
        *,
        engine: Engine,
        settings: Settings,
        worker_id: str | None = None,
        kind: str = "generate",
        device: str | None = None,
    ):
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.kind = kind  # "generate" runs or "finetune" jobs
        self.device = device
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run_forever(self, *, once: bool = False) -> None:
        model = FineTuneJob if self.kind == "finetune" else Run
        while not self._stop.is_set():
            try:
                worked = await self._claim_and_execute(model)
            except Exception:
                # A database outage or a bug in one run must not end the loop for good (the
                # embedded worker would be gone until a restart); the lease of whatever was
                # claimed expires and the row is claimed again.
                log.exception("worker %s: claim or execution failed; retrying", self.worker_id)
                worked = False
            if not worked:
                if once:
                    return
                await asyncio.sleep(self.settings.worker_poll_seconds)

    async def _claim_and_execute(self, model: Leased) -> bool:
        """Claim one row and drive it; False when nothing was waiting."""
        from app.finetune_worker import execute_job
        from app.pipeline import execute_run

        row_id = claim(
            self.engine,
            model,
            worker_id=self.worker_id,
            lease_seconds=self.settings.worker_lease_seconds,
        )
        if row_id is None:
            return False
        log.info("worker %s claimed %s %s", self.worker_id, model.__name__, row_id)
        if model is Run:
            assert isinstance(row_id, int)
            await execute_run(
                engine=self.engine, settings=self.settings, run_id=row_id, worker=self
            )
        else:
            # Training blocks; a thread keeps this loop (and its lease checks) responsive.
            await asyncio.to_thread(
                execute_job,
                engine=self.engine,
                settings=self.settings,
                job_id=str(row_id),
                worker=self,
                device=self.device,
            )
        return True

    def start_thread(self) -> threading.Thread:
        """The embedded worker: its own thread and event loop, so requests never wait on it."""
        thread = threading.Thread(
            target=lambda: asyncio.run(self.run_forever()), name="selfinstruct-worker", daemon=True
        )
        thread.start()
        return thread
