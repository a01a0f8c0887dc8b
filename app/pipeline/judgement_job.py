"""A judgement job's execution: the matching tasks stream through the judge at its pool's
capacity, and their judgements commit in small groups with the job's counters.

Resuming. The job reads its tasks in id order, skipping those it already has a judgement for
(one query with NOT EXISTS), so a job killed at any moment and claimed again by another worker
judges each task once; judgements in flight at the kill were never stored and are asked again.
A judge request that fails after its retries leaves the task unjudged and counted in
`failed_requests`; the job goes on, and fails as `backend_failing` after many in a row. Anything
else that goes wrong while judging a task (a bug, a task row the prompt cannot be built from)
fails the job with the error, rather than letting it succeed with that task left out.

Fencing. Commits and the finish land only while the job is running and held by this worker: a
worker that lost its lease (stalled, and another took the job over) writes nothing more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app import faults
from app.db import retry_transient
from app.leases import Keeper, Lease, LeaseHolder, kept, release
from app.llm import backend_for, find_model, price_table
from app.models import JudgementEvent, JudgementJob, RunStatus, Task, TaskJudgement, utcnow
from app.pipeline.storage import new_ids
from app.schemas.judging import JudgementJobCreate
from app.services.dataset_lock import lock
from app.services.judgement_jobs import job_task_query, progress
from app.settings import Settings
from generators.base import Backend, Generation
from generators.errors import GeneratorError
from generators.judge_prompts import Judgement, JudgeTask, build_judge_prompt, judgement_from

log = logging.getLogger("selfinstruct.judging")

PAGE = 200  # tasks read per query
GROUP_SECONDS = 0.5  # commit at least this often while judgements wait...
GROUP_ROWS = 100  # ...or as soon as this many do
MAX_FAILED_IN_ROW = 20  # judge requests failing in a row before the job gives up


@dataclass
class Done:
    task_id: int
    judgement: Judgement | None  # None: the request failed
    generation: Generation | GeneratorError


class JudgementExecution:
    """One execution of a judgement job, from its claim to its end or the loss of its lease."""

    def __init__(
        self, *, engine: Engine, settings: Settings, job: JudgementJob, worker: LeaseHolder | None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.job_id: int = job.id  # type: ignore[assignment]
        self.dataset_id = job.dataset_id
        self.params = JudgementJobCreate.model_validate(
            {k: v for k, v in job.params.items() if k != "max_task_id"}
        )
        self.max_task_id = int(job.params.get("max_task_id", 0))
        self.worker = worker
        self.lease: Lease | None = worker.lease if worker else None
        self.keeper: Keeper | None = None  # renews the lease while it drives
        self.entry = find_model(settings, job.model, engine)
        self.prices = price_table(settings)
        self.backend: Backend | None = None
        self.after = 0  # the last task id read
        self.exhausted = False
        self.buffer: list[Done] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.failed_in_row = 0
        self.error: BaseException | None = None  # a task's unexpected error: the job fails
        self.wake = asyncio.Event()

    def _next_page(self) -> list[tuple[int, str, list[dict[str, str]], str | None]]:
        judged_here = (
            select(TaskJudgement.id)
            .where(TaskJudgement.task_id == Task.id, TaskJudgement.judgement_job_id == self.job_id)
            .exists()
        )
        with Session(self.engine) as session:
            rows = session.exec(
                select(Task.id, Task.instruction, Task.instances, Task.language)  # type: ignore[call-overload]
                .where(
                    *job_task_query(self.dataset_id, self.params, self.max_task_id),
                    col(Task.id) > self.after,
                    ~judged_here,
                )
                .order_by(col(Task.id))
                .limit(PAGE)
            ).all()
        return [(int(i or 0), t, list(inst or []), lang) for i, t, inst, lang in rows]

    async def _judge(self, task_id: int, instruction: str, instances: Any, language: Any) -> None:
        assert self.backend is not None
        prompt = build_judge_prompt(JudgeTask(instruction, instances, language or "en"))
        chat = self.entry.mode == "chat"
        (result,) = await self.backend.generate(
            [prompt.for_model(chat)], prompt.params, return_exceptions=True
        )
        if isinstance(result, GeneratorError):
            self.buffer.append(Done(task_id, None, result))
            return
        judgement = judgement_from(result.text, model=self.entry.id, prompt_version=prompt.version)
        self.buffer.append(Done(task_id, judgement, result))
        faults.point("judgement:running")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.in_flight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.in_flight.discard(t)
            if not t.cancelled() and t.exception() is not None and self.error is None:
                self.error = t.exception()  # the loop fails the job with it
            self.wake.set()

        task.add_done_callback(done)

    def _commit(self, done: list[Done], live: dict[str, Any]) -> bool:
        """One transaction: judgements, the tasks' latest rating, the job's counters and its
        `progressed` mark. False: cancelled or taken over, nothing written. A transient
        database error runs the whole transaction again (app.db.retry_transient)."""
        return retry_transient(
            f"judgement job {self.job_id}: commit", lambda: self._commit_once(done, live)
        )

    def _commit_once(self, done: list[Done], live: dict[str, Any]) -> bool:
        with Session(self.engine, expire_on_commit=False) as session:
            # The lock order of every writer of a dataset's tasks: its row, then task rows
            # (app/services/dataset_lock.py), so a judgement job never deadlocks a run.
            lock(session, self.dataset_id)
            job = session.exec(
                select(JudgementJob).where(JudgementJob.id == self.job_id).with_for_update()
            ).one()
            lost = self.lease is not None and not self.lease.holds(job)
            if job.status != RunStatus.running or lost:
                session.rollback()
                return False
            stored = sorted((d for d in done if d.judgement is not None), key=lambda d: d.task_id)
            conn = session.connection()
            if stored:
                ids = new_ids(session, "judgement", len(stored))
                now = utcnow()
                conn.execute(
                    sa.insert(TaskJudgement),
                    [
                        {
                            "id": jid,
                            "task_id": d.task_id,
                            "rating": d.judgement.rating,  # type: ignore[union-attr]
                            "rationale": d.judgement.rationale,  # type: ignore[union-attr]
                            "judge_model": d.judgement.model,  # type: ignore[union-attr]
                            "prompt_version": d.judgement.prompt_version,  # type: ignore[union-attr]
                            "judgement_job_id": self.job_id,
                            "created_at": now,
                        }
                        for d, jid in zip(stored, ids, strict=True)
                    ],
                )
                conn.execute(
                    sa.update(Task)
                    .where(col(Task.id) == sa.bindparam("tid"))
                    .values(rating=sa.bindparam("r"), judgement_id=sa.bindparam("jid")),
                    [
                        {"tid": d.task_id, "r": d.judgement.rating, "jid": jid}  # type: ignore[union-attr]
                        for d, jid in zip(stored, ids, strict=True)
                    ],
                )
            rated = Counter(d.judgement.rating for d in stored if d.judgement.rating)  # type: ignore[union-attr]
            job.done += len(stored)
            job.judged += sum(rated.values())
            job.unjudged += len(stored) - sum(rated.values())
            job.ratings = dict(Counter(job.ratings) + rated)
            for d in done:
                g = d.generation
                job.requests += 1
                if isinstance(g, GeneratorError):
                    job.failed_requests += 1
                else:
                    job.prompt_tokens += g.prompt_tokens
                    job.completion_tokens += g.completion_tokens
                    job.cost += self.prices.cost(
                        self.entry.id, g.prompt_tokens, g.completion_tokens
                    )
            state = dict(job.state)
            failures = [d.generation for d in done if isinstance(d.generation, GeneratorError)]
            if failures:
                state["last_error"] = str(failures[-1])
            state.update(live)
            job.state = state
            if done:
                job.progressed = True  # this holder made progress: its loss is not counted
            job.updated_at = utcnow()
            session.add(job)
            if done:
                session.add(
                    JudgementEvent(
                        judgement_job_id=self.job_id,
                        kind="progress",
                        data=progress(job).model_dump(mode="json"),
                    )
                )
                faults.point("judgement:committing")
            session.commit()
            return True

    @property
    def giving_up(self) -> bool:
        return self.failed_in_row >= MAX_FAILED_IN_ROW

    async def drive(self) -> None:
        self.backend = backend_for(self.settings, self.entry)
        pending: collections.deque[tuple[int, str, list[dict[str, str]], str | None]]
        pending = collections.deque()
        last_commit = time.monotonic()
        try:
            while True:
                if self.worker is not None and self.worker.stopping:
                    await self._cancel()  # judgements in flight are asked again on resume
                    if await self._flush() and self.lease is not None:
                        # handed back at once, at no cost to its attempts (app/leases.py)
                        await asyncio.to_thread(release, self.engine, self.lease)
                    return
                if self.keeper is not None and self.keeper.lost.is_set():
                    await self._cancel()  # cancelled or taken over
                    return
                if self.error is not None:
                    raise self.error
                if not pending and not self.exhausted and not self.giving_up:
                    page = await asyncio.to_thread(self._next_page)
                    if page:
                        self.after = page[-1][0]
                        pending.extend(page)
                    else:
                        self.exhausted = True
                capacity = max(1, self.backend.capacity())
                while pending and len(self.in_flight) < capacity and not self.giving_up:
                    self._spawn(self._judge(*pending.popleft()))
                now = time.monotonic()
                if len(self.buffer) >= GROUP_ROWS or now - last_commit >= GROUP_SECONDS:
                    last_commit = now
                    if not await self._flush():  # cancelled or taken over
                        await self._cancel()
                        return
                if not self.in_flight and (self.giving_up or (self.exhausted and not pending)):
                    if await self._flush():
                        self._finish()
                    return
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=0.1)
        except Exception as exc:
            log.exception("judgement job %s failed", self.job_id)
            await self._cancel()
            finish_job(
                self.engine,
                job_id=self.job_id,
                status=RunStatus.failed,
                stop_reason="error",
                error=f"{type(exc).__name__}: {exc}",
                lease=self.lease,
            )

    async def _flush(self) -> bool:
        done, self.buffer = self.buffer, []
        for d in done:
            self.failed_in_row = self.failed_in_row + 1 if d.judgement is None else 0
        live = {"in_flight": len(self.in_flight)}
        return await asyncio.to_thread(self._commit, done, live)

    def _finish(self) -> None:
        if self.failed_in_row >= MAX_FAILED_IN_ROW:
            with Session(self.engine) as session:
                job = session.get(JudgementJob, self.job_id)
                last = job.state.get("last_error") if job else None
            finish_job(
                self.engine,
                job_id=self.job_id,
                status=RunStatus.failed,
                stop_reason="backend_failing",
                error=f"{MAX_FAILED_IN_ROW} judge requests in a row failed after retries; "
                f"last error: {last}",
                lease=self.lease,
            )
            return
        finish_job(
            self.engine,
            job_id=self.job_id,
            status=RunStatus.succeeded,
            stop_reason="done",
            lease=self.lease,
        )

    async def _cancel(self) -> None:
        for task in list(self.in_flight):
            task.cancel()
        for task in list(self.in_flight):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.in_flight.clear()


def finish_job(
    engine: Engine,
    *,
    job_id: int,
    status: RunStatus,
    stop_reason: str,
    error: str | None = None,
    lease: Lease | None = None,
) -> bool:
    """End a running judgement job once; False when it had ended already (or was cancelled)
    or, given the `lease` that executed it, when that lease is no longer the job's: another
    worker took it over after this one lost it, so only the holder's finish lands, and the
    refusal is logged."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.exec(
            select(JudgementJob).where(JudgementJob.id == job_id).with_for_update()
        ).one()
        if job.status != RunStatus.running:
            return False
        if lease is not None and lease.refuses(job, f"finish ({status.value})"):
            return False
        job.status = status
        job.stop_reason = stop_reason
        job.error = error
        job.finished_at = utcnow()
        job.updated_at = job.finished_at
        job.lease_expires_at = None
        job.state = {**job.state, "in_flight": 0}
        session.add(job)
        end = {"status": status.value, "stop_reason": stop_reason, "error": error}
        session.add(
            JudgementEvent(
                judgement_job_id=job_id,
                kind="end",
                data={**end, **progress(job).model_dump(mode="json")},
            )
        )
        faults.point("judgement:finishing")
        session.commit()
    return True


async def execute_judgement_job(
    *, engine: Engine, settings: Settings, job_id: int, worker: LeaseHolder | None = None
) -> None:
    """Drive a claimed judgement job to a final state (or until cancelled or taken over)."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.exec(select(JudgementJob).where(JudgementJob.id == job_id)).one()
        session.add(
            JudgementEvent(judgement_job_id=job_id, kind="status", data={"status": "running"})
        )
        job.state = {**job.state, "executions": int(job.state.get("executions", 0)) + 1}
        session.add(job)
        session.commit()
    lease = worker.lease if worker is not None else None
    try:
        runner = JudgementExecution(engine=engine, settings=settings, job=job, worker=worker)
    except Exception as exc:  # the judge left the catalogue after a settings change...
        finish_job(
            engine,
            job_id=job_id,
            status=RunStatus.failed,
            stop_reason="setup_failed",
            error=str(exc),
            lease=lease,
        )
        return
    if lease is None:
        await runner.drive()
        return
    async with kept(engine, lease, lease_seconds=settings.worker_lease_seconds) as keeper:
        runner.keeper = keeper
        await runner.drive()
