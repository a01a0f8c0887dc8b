"""A claimed run, or a claimed shard of one, from its claim to its Stream (app/pipeline/
driver.py): say it runs, load its pool (warm when the worker kept it), build its context with its
share, and drive it under a lease renewed on its own clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.leases import Keeper, Lease, LeaseHolder, kept
from app.llm import find_model
from app.models import Dataset, JobPart, Run, RunEvent, RunStatus, utcnow
from app.pipeline.context import RunContext, Share, Totals
from app.pipeline.driver import Stream
from app.pipeline.ending import finish
from app.pipeline.loading import load_pool
from app.pipeline.pool_cache import warm
from app.settings import Settings

T = TypeVar("T")


async def execute_run(
    *, engine: Engine, settings: Settings, run_id: int, worker: LeaseHolder | None = None
) -> None:
    """Drive a claimed run to a final state; returns early if it is cancelled or taken over.

    With a worker, its lease is renewed on its own clock (app.leases.kept) while the run goes;
    without one (tests, benchmarks) nothing is fenced."""
    lease = worker.lease if worker is not None else None
    if lease is None:
        await _execute(engine, settings, run_id, worker, None)
        return
    async with kept(engine, lease, lease_seconds=settings.worker_lease_seconds) as keeper:
        await _execute(engine, settings, run_id, worker, keeper)


async def execute_shard(*, engine: Engine, settings: Settings, worker: LeaseHolder) -> None:
    """Drive the claimed shard of a run (the worker's lease is on its part) to a final state;
    the run ends with its last shard (app/pipeline/storage.py)."""
    lease = worker.lease
    assert lease is not None and lease.model is JobPart
    with Session(engine) as session:
        part = session.get(JobPart, lease.row_id)
        run_id = int(part.job_id) if part is not None else None
    if run_id is None:
        return
    async with kept(engine, lease, lease_seconds=settings.worker_lease_seconds) as keeper:
        await _execute(engine, settings, run_id, worker, keeper)


def _start(engine: Engine, run_id: int, lease: Lease | None) -> tuple[Run, JobPart | None] | None:
    """Say the run (or its shard) runs, count the execution; None when a shard's run is over or
    gone (its part is ended with it)."""
    shard = lease is not None and lease.model is JobPart
    with Session(engine, expire_on_commit=False) as session:
        run = session.exec(select(Run).where(Run.id == run_id).with_for_update()).first()
        if not shard:
            assert run is not None
            session.add(RunEvent(run_id=run_id, kind="status", data={"status": "running"}))
            run.state = {**run.state, "executions": int(run.state.get("executions", 0)) + 1}
            session.add(run)
            session.commit()
            return run, None
        assert lease is not None
        part = session.exec(
            select(JobPart).where(JobPart.id == lease.row_id).with_for_update()
        ).one()
        if not lease.holds(part):
            return None
        now = utcnow()
        if run is None or run.status not in (RunStatus.queued, RunStatus.running):
            part.status = "cancelled" if run is not None else "failed"
            part.error = None if run is not None else f"run {run_id} no longer exists"
            part.finished_at = part.updated_at = now
            part.lease_expires_at = None
            session.add(part)
            session.commit()
            return None
        if run.status == RunStatus.queued:
            run.status = RunStatus.running
            run.started_at = now
            run.updated_at = now
            session.add(run)
        data = {"status": "running", "shard": part.part, "worker_id": lease.owner}
        session.add(RunEvent(run_id=run_id, kind="status", data=data))
        part.state = {**part.state, "executions": int(part.state.get("executions", 0)) + 1}
        session.add(part)
        session.commit()
        return run, part


async def _execute(
    engine: Engine,
    settings: Settings,
    run_id: int,
    worker: LeaseHolder | None,
    keeper: Keeper | None,
) -> None:
    lease = keeper.lease if keeper is not None else None
    started = await asyncio.to_thread(_start, engine, run_id, lease)
    if started is None:
        return
    run, part = started
    with Session(engine, expire_on_commit=False) as session:
        dataset = session.exec(select(Dataset).where(Dataset.id == run.dataset_id)).one()
    try:
        model = find_model(settings, run.model, engine)
        # A pool of 1M tasks takes half a minute to load; the lease is renewed meanwhile. A
        # worker keeps the pools of its recent runs warm (app/pipeline/pool_cache.py).
        loaded = await _unless_lost(
            asyncio.to_thread(
                warm(worker, load_pool),
                engine,
                dataset_id=dataset.id,  # type: ignore[arg-type]
                held_out_share=dataset.held_out_share,
            ),
            keeper,
        )
        if loaded is None:
            return  # cancelled or taken over while loading
        ctx = RunContext(
            engine=engine, settings=settings, run=run, dataset=dataset, model=model, loaded=loaded
        )
    except Exception as exc:  # unknown model after a settings change, bad params...
        finish(
            engine,
            run_id=run_id,
            status=RunStatus.failed,
            stop_reason="setup_failed",
            error=str(exc),
            lease=lease,
        )
        return
    ctx.lease = lease
    ctx.share = Share.of(run, ctx.params.caps, part)
    ctx.committed = Totals.of(run, part)
    executions = (part.state if part is not None else run.state).get("executions", 0)
    await Stream(ctx, run, worker, keeper, int(executions)).drive()


async def _unless_lost(work: Awaitable[T], keeper: Keeper | None) -> T | None:
    """Await `work`, or None as soon as the lease is lost (cancelled or taken over)."""
    task = asyncio.ensure_future(work)
    if keeper is None:
        return await task
    lost = asyncio.ensure_future(keeper.lost.wait())
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
    if task.done():
        return task.result()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # result unwanted
    return None
