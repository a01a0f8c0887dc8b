"""The worker loop: claim a job (app/leases.py) and execute it. A generation worker executes
runs, judgement jobs, evaluations and recipes, the oldest waiting first; a fine-tune worker
fine-tunes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from app import faults
from app.leases import (
    PRESENCE_INTERVAL_S,
    Lease,
    Leased,
    claim_next,
    kind_slug,
    mark_gone,
    mark_present,
    part_of,
)
from app.models import Evaluation, FineTuningJobRow, JobPart, JudgementJob, Recipe, Run
from app.settings import Settings
from app.worker_ids import new_worker_id

log = logging.getLogger("selfinstruct.worker")


class Worker:
    """Claims jobs one at a time and executes them; `stop` ends the loop between jobs."""

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
        # Set from any thread to end an idle wait at once (stop, or new work queued here), so a
        # stop or a queued run never waits out worker_poll_seconds.
        self._wake: asyncio.Event | None = None
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._marked = -PRESENCE_INTERVAL_S  # when the presence file was last refreshed
        self.lease: Lease | None = None  # what it executes now
        from app.pipeline.pool_cache import PoolCache

        # Datasets' pools kept in memory between runs, so the next run starts at once.
        self.pools = PoolCache(max_bytes=settings.pool_cache_mb << 20)

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    def wake(self) -> None:
        """End the current idle wait early; safe to call from any thread."""
        loop, event = self._loop_ref, self._wake
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    async def _idle(self) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.settings.worker_poll_seconds)
        self._wake.clear()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def kinds(self) -> tuple[Leased, ...]:
        if self.kind == "finetune":
            return (FineTuningJobRow,)
        return (Run, JobPart, JudgementJob, Evaluation, Recipe)

    @property
    def narrowed(self) -> dict[Leased, list[sa.ColumnElement[bool]]]:
        """A run of several shards is claimed shard by shard (its parts), never whole."""
        if self.kind == "finetune":
            return {}
        return {Run: [col(Run.shards) == 1], JobPart: part_of(Run)}

    def attempts(self, model: Leased) -> int:
        """The attempt cap of a kind (app/leases.py)."""
        if model is FineTuningJobRow:
            return self.settings.finetune_attempts
        return self.settings.job_attempts

    async def run_forever(self, *, once: bool = False) -> None:
        self._wake = asyncio.Event()
        self._loop_ref = asyncio.get_running_loop()
        try:
            await self._loop(once=once)
        finally:
            self._loop_ref = None
            if self.kind == "finetune":
                mark_gone(self.settings.data_dir, self.kind, self.worker_id)

    def _present(self) -> None:
        """Fine-tune workers say they are there, so the API can tell a job when none is."""
        now = time.monotonic()
        if self.kind == "finetune" and now - self._marked >= PRESENCE_INTERVAL_S:
            if not mark_present(self.settings.data_dir, self.kind, self.worker_id):
                log.warning("worker %s: cannot write its presence file", self.worker_id)
            self._marked = now

    async def _loop(self, *, once: bool) -> None:
        while not self._stop.is_set():
            self._present()
            try:
                worked = await self._claim_and_execute()
            except Exception:
                # A database outage or a bug in one run must not end the loop for good (the
                # embedded worker would be gone until a restart); the lease of whatever was
                # claimed expires and the row is claimed again.
                log.exception("worker %s: claim or execution failed; retrying", self.worker_id)
                worked = False
            if not worked:
                if once:
                    return
                await self._idle()

    async def _claim_and_execute(self) -> bool:
        """Claim one job and drive it; False when nothing was waiting. A fine-tune worker first
        looks for a node of a job on several machines: its host is already waiting for it."""
        lease = None
        if self.kind == "finetune":
            from app.finetune.nodes import claim_node

            lease = await asyncio.to_thread(claim_node, self.engine, self.settings, self.worker_id)
        if lease is None:
            lease = await asyncio.to_thread(
                claim_next,
                self.engine,
                self.kinds,
                worker_id=self.worker_id,
                lease_seconds=self.settings.worker_lease_seconds,
                attempts=self.attempts,
                where=self.narrowed,
            )
        if lease is None:
            return False
        log.info("worker %s claimed %s %s", self.worker_id, lease.model.__name__, lease.row_id)
        self.lease = lease
        faults.point(f"{kind_slug(lease.model)}:claimed")
        try:
            await self.execute(lease)
        finally:
            self.lease = None
        return True

    async def execute(self, lease: Lease) -> None:
        from app.finetune.nodes import execute_node
        from app.finetune.worker import execute_job
        from app.pipeline import execute_run, execute_shard
        from app.pipeline.judgement_job import execute_judgement_job
        from app.pipeline.recipe_job import execute_recipe
        from app.services.evaluation_runner import execute_evaluation

        if lease.model is Run:
            await execute_run(
                engine=self.engine, settings=self.settings, run_id=lease.row_id, worker=self
            )
        elif lease.model is JobPart and self.kind != "finetune":  # a shard of a run
            await execute_shard(engine=self.engine, settings=self.settings, worker=self)
        elif lease.model is JudgementJob:
            await execute_judgement_job(
                engine=self.engine, settings=self.settings, job_id=lease.row_id, worker=self
            )
        elif lease.model is Evaluation:
            await execute_evaluation(
                engine=self.engine, settings=self.settings, evaluation_id=lease.row_id, worker=self
            )
        elif lease.model is Recipe:
            await execute_recipe(
                engine=self.engine, settings=self.settings, recipe_id=lease.row_id, worker=self
            )
        elif lease.model is JobPart:  # a node of a job on several machines
            await asyncio.to_thread(
                execute_node,
                engine=self.engine,
                settings=self.settings,
                worker=self,
                device=self.device,
            )
        else:
            # Training blocks; a thread keeps this loop (and its lease checks) responsive.
            await asyncio.to_thread(
                execute_job,
                engine=self.engine,
                settings=self.settings,
                job_id=str(lease.row_id),
                worker=self,
                device=self.device,
            )

    def start_thread(self) -> threading.Thread:
        """The embedded worker: its own thread and event loop, so requests never wait on it."""
        thread = threading.Thread(
            target=lambda: asyncio.run(self.run_forever()), name="selfinstruct-worker", daemon=True
        )
        thread.start()
        return thread
