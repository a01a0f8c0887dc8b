"""The driver: keeps a run's requests in flight at the capacity of its model's pool.

Every candidate is its own task: screen → (room reserved) → classify → instances → decide.
A prompt for new candidates is sent whenever the backend has a free slot and the run has room,
so the server sees a steady stream instead of batches that wait for their slowest answer.

Room. A candidate that passed screening reserves one of the places left before the target
(target − accepted − reserved) before spending requests; when none is left it waits for one
(a reserved candidate may still be rejected), and once the target is met the waiting ones are
stored as `over_target` without a request spent on them. So the target is never overshot.

Stopping. New prompts stop when the target is met, a cap forbids a request, too many generation
answers in a row were useless, or too many prompts passed without an acceptance; the run ends
when what is in flight has drained and the last commit group is written. Cancellation, a lost
lease and a worker shutdown stop at once: tasks in flight are dropped (their verdicts were not
committed, so counters still equal rows) and the next worker resumes from the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from typing import Any, TypeVar

from app import faults
from app.leases import Keeper, LeaseHolder, release
from app.models import Run, RunStatus, TaskStatus
from app.pipeline.context import CapReached, RunContext, Tally, Totals, Verdict
from app.pipeline.ending import cap_reached, fail_on_error, finish
from app.pipeline.stages import (
    classify,
    decide,
    judge,
    make_instances,
    rejected,
    screen,
)
from app.pipeline.storage import Committed, LateNeighbours, absorb, commit_group
from app.strategies import Candidate

log = logging.getLogger("selfinstruct.pipeline")
T = TypeVar("T")

MAX_USELESS_BATCHES = 3  # in a row, counted in prompts_per_batch answers: nothing usable
MAX_IDLE_BATCHES = 25  # prompts_per_batch prompts each, without an acceptance
GROUP_SECONDS = 0.5  # commit at least this often while there is something to store...
GROUP_ROWS = 200  # ...or as soon as this many verdicts wait
POLL_SECONDS = 0.5  # read the run's status (cancel) at least this often
NEIGHBOUR_BACKLOG = 2000  # neighbour queries unanswered before new prompts wait for them
NEIGHBOUR_DRAIN_S = 120.0  # how long the end of a run waits for the last neighbours
RATE_WINDOW_S = 10.0  # requests/s and accepted/s over about this long


class Stream:
    """One execution of a run: its tasks, its room and its stopping rules."""

    def __init__(
        self,
        ctx: RunContext,
        run: Run,
        worker: LeaseHolder | None,
        keeper: Keeper | None,
        executions: int = 0,
    ) -> None:
        self.ctx = ctx
        self.worker = worker
        self.keeper = keeper
        self.target = ctx.share.target  # the run's, or its shard's share
        self.run = run
        # The run's (its shard's) committed, plus decided and waiting for their commit.
        self.accepted = ctx.committed.accepted
        self.reserved = 0
        self.waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self.buffer: list[Verdict] = []
        self.in_progress: set[str] = set()
        self.wake = asyncio.Event()
        ppb = ctx.params.prompt.prompts_per_batch
        self.useless_limit = MAX_USELESS_BATCHES * ppb
        self.idle_limit = MAX_IDLE_BATCHES * ppb
        self.useless = 0  # generation answers in a row with nothing usable
        self.last_useless_failed = False
        self.idle = 0  # prompts since the last acceptance
        self.capped: str | None = None
        self.launching = 0  # prompt tasks created and not sent yet
        shard = "" if ctx.share.shard is None else f"{ctx.share.shard}/"
        self.rng = random.Random(f"{ctx.params.seed}:{ctx.run_id}:{shard}{executions}")
        self.rates: collections.deque[tuple[float, int, int]] = collections.deque()
        self.committing: asyncio.Task[Committed] | None = None
        # Neighbours from the neighbour process: answers not matched to a row yet, rows
        # committed before their answer came (query -> task id), answers to write later.
        self.answers: dict[int, tuple[float, list[dict[str, Any]]]] = {}
        self.awaiting: dict[int, int] = {}
        self.late: list[LateNeighbours] = []
        self.error: BaseException | None = None  # a stage's bug: the run fails with it
        self.last_commit = time.monotonic()

    # --- room ---

    async def reserve(self) -> bool:
        """A place before the target for one candidate; False once the target is met."""
        if self.accepted + self.reserved < self.target and not self.waiters:
            self.reserved += 1
            return True
        if self.accepted >= self.target:
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def release(self, *, accepted: bool) -> None:
        self.reserved -= 1
        self.accepted += int(accepted)
        self.settle()

    def settle(self) -> None:
        while self.waiters and self.accepted + self.reserved < self.target:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.reserved += 1
                waiter.set_result(True)
        if self.accepted >= self.target:
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(False)

    # --- tasks ---

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("run %s: a stage failed", self.ctx.run_id, exc_info=task.exception())
            self.error = task.exception()
        self.wake.set()

    async def prompt(self) -> None:
        self.launching -= 1
        ctx = self.ctx
        try:
            found = await ctx.strategy.generate(self.rng)
        except CapReached as cap:
            self.capped = cap.reason
            return
        uses_model = ctx.strategy.uses_model
        self.idle += 1 if uses_model else ctx.params.prompt.prompts_per_batch
        if found is None or (not found and uses_model):
            self.useless += 1
            self.last_useless_failed = found is None
        else:
            self.useless = 0
        for cand in found or []:
            self.spawn(self.candidate(cand))

    async def candidate(self, cand: Candidate) -> None:
        faults.point("run:running")  # an answer came; nothing of it is stored yet
        ctx = self.ctx
        item = screen(ctx, cand, self.in_progress)
        if isinstance(item, Verdict):
            self.buffer.append(item)
            return
        self.in_progress.add(cand.instruction)
        try:
            if not await self.reserve():
                self.buffer.append(
                    rejected(cand, "over_target", "the run reached its target first")
                )
                return
            accepted = False
            try:
                await classify(ctx, item)
                await make_instances(ctx, item)
                await judge(ctx, item)
                verdict = decide(ctx, item)
                accepted = verdict.status == TaskStatus.accepted
                if accepted:
                    self.idle = 0
                self.buffer.append(verdict)
            except CapReached as cap:
                self.capped = cap.reason
                self.buffer.append(
                    rejected(cand, "over_cap", f"{cap.reason} was reached before this was done")
                )
            finally:
                self.release(accepted=accepted)
        finally:
            self.in_progress.discard(cand.instruction)

    def may_prompt(self) -> bool:
        ctx = self.ctx
        if self.capped or self.error is not None:
            return False
        if self.accepted + self.reserved >= self.target or self.waiters:
            return False
        if self.useless >= self.useless_limit or self.idle >= self.idle_limit:
            return False
        strategy = ctx.strategy
        if strategy.exhausted():
            return False
        if not strategy.can_prompt(launching=self.launching, candidates=self.run.candidates):
            return False
        if ctx.neighbours is not None and ctx.neighbours.pending >= NEIGHBOUR_BACKLOG:
            return False
        if ctx.in_flight + self.launching >= ctx.capacity():
            return False
        try:
            ctx.check_budget()
        except CapReached as cap:
            self.capped = cap.reason
            return False
        return True

    def launch(self) -> None:
        while self.may_prompt():
            self.launching += 1
            self.spawn(self.prompt())
            if not self.ctx.strategy.uses_model:
                break  # no model: one draw per turn of the loop lets candidates be decided

    # --- commits ---

    def _live(self) -> dict[str, Any]:
        """In-flight requests and rates, stored with the counters for the API and dashboard."""
        now = time.monotonic()
        committed_requests = self.ctx.committed.requests + self.ctx.tally.requests
        self.rates.append((now, committed_requests, self.accepted))
        while len(self.rates) > 2 and now - self.rates[1][0] >= RATE_WINDOW_S:
            self.rates.popleft()
        t0, r0, a0 = self.rates[0]
        span = now - t0
        return {
            "in_flight": self.ctx.in_flight,
            "requests_per_s": round((committed_requests - r0) / span, 3) if span > 0 else 0.0,
            "accepted_per_s": round((self.accepted - a0) / span, 3) if span > 0 else 0.0,
        }

    def collect_neighbours(self, wait_s: float = 0.0) -> None:
        """Answers of the neighbour process: for rows already committed they are written with
        the next commit, the others wait for their verdict's commit."""
        if self.ctx.neighbours is None:
            return
        if not self.ctx.neighbours.alive:
            # Killed (out of memory with a second copy of a large pool): decide with the inline
            # check from now on; rows still waiting keep empty neighbours.
            log.error(
                "run %s: the neighbour process died; computing neighbours inline", self.ctx.run_id
            )
            self.ctx.neighbours = None
            self.awaiting.clear()
            for v in self.buffer:
                v.query = None
            return
        for query, best, near in self.ctx.neighbours.results(wait_s=wait_s):
            found = [{"task_id": key, "score": float(score)} for key, score in near]
            assert isinstance(query, int)
            task_id = self.awaiting.pop(query, None)
            if task_id is not None:
                self.late.append((task_id, best, found))
            else:
                self.answers[query] = (best, found)

    def start_commit(self) -> None:
        ctx = self.ctx
        verdicts, self.buffer = self.buffer, []
        for v in verdicts:
            if v.query is not None and v.query in self.answers:
                v.max_rouge, v.nearest = self.answers.pop(v.query)
                v.query = None
        late, self.late = self.late, []
        tally = ctx.committing = ctx.tally.take()
        self.committing = asyncio.get_running_loop().create_task(
            asyncio.to_thread(commit_group, ctx, verdicts, tally, ctx.foreign, self._live(), late)
        )
        self.committing.add_done_callback(lambda _: self.wake.set())
        self.last_commit = time.monotonic()

    def apply(self, done: Committed) -> bool:
        """Bring the in-memory pool in line with what was committed; False: stop now."""
        ctx = self.ctx
        if not done.running:
            return False
        assert done.run is not None
        self.run = done.run
        ctx.committed = Totals.of(done.run, done.part)
        for query, task_id in done.awaiting.items():
            if query in self.answers:  # answered while the commit ran
                best, found = self.answers.pop(query)
                self.late.append((task_id, best, found))
            else:
                self.awaiting[query] = task_id
        absorb(ctx, done)
        self.accepted -= len(done.demoted)
        self.settle()
        return True

    async def finish_commit(self) -> bool:
        if self.committing is None:
            return True
        committing, self.committing = self.committing, None
        try:
            done = await committing
        except Exception:
            log.exception("run %s: a commit failed", self.ctx.run_id)
            raise
        finally:
            self.ctx.committing = Tally()  # now in `committed`, or lost with the run
        return self.apply(done)

    # --- the loop ---

    @property
    def lease_lost(self) -> bool:
        return self.keeper is not None and self.keeper.lost.is_set()

    async def drive(self) -> None:
        ctx = self.ctx
        try:
            while True:
                committed = self.committing is not None and self.committing.done()
                if committed and not await self.finish_commit():
                    return  # cancelled or taken over: drop what is in flight
                self.collect_neighbours()
                now = time.monotonic()
                if self.worker is not None and self.worker.stopping:
                    await self._stop_for_shutdown()
                    return
                if self.lease_lost:
                    return  # cancelled or taken over: the next commit would be refused too
                if self.committing is None and (
                    len(self.buffer) >= GROUP_ROWS
                    or now - self.last_commit >= (GROUP_SECONDS if self.buffer else POLL_SECONDS)
                ):
                    self.start_commit()
                if self.error is not None:
                    raise self.error
                self.launch()
                if not self.tasks and self.launching == 0 and not self.may_prompt():
                    if await self._drained_and_finished():
                        return
                    continue
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=0.1)
        except Exception as exc:
            log.exception("run %s failed", ctx.run_id)
            await self._cancel_tasks()
            fail_on_error(ctx.engine, run_id=ctx.run_id, exc=exc, lease=ctx.lease)
        finally:
            await self._cancel_tasks()
            if self.committing is not None:  # a commit checks its lease and status itself
                with contextlib.suppress(Exception):
                    await self.committing
            if ctx.neighbours is not None:
                await asyncio.to_thread(ctx.neighbours.close)

    async def _drained_and_finished(self) -> bool:
        """Nothing in flight and nothing to start: write the last group, then end the run
        unless that commit changed the picture (a demotion freed room)."""
        if not await self.finish_commit():
            return True  # cancelled or taken over meanwhile
        await self._drain_neighbours()
        self.start_commit()
        if not await self.finish_commit():
            return True
        if self.may_prompt():
            return False
        ctx = self.ctx
        done = ctx.committed
        if done.accepted >= self.target:
            reason: str | None = "target_reached"
        else:
            reason = self.capped or cap_reached(done, ctx.share.caps) or ctx.strategy.exhausted()
        if reason:
            finish(
                ctx.engine,
                run_id=ctx.run_id,
                status=RunStatus.succeeded,
                stop_reason=reason,
                lease=ctx.lease,
            )
        elif self.useless >= self.useless_limit:
            finish(
                ctx.engine,
                run_id=ctx.run_id,
                status=RunStatus.failed,
                lease=ctx.lease,
                **self._useless(),
            )
        else:
            finish(
                ctx.engine,
                run_id=ctx.run_id,
                lease=ctx.lease,
                status=RunStatus.failed,
                stop_reason="stalled",
                error=f"no candidate was accepted in {self.idle} prompts in a row; "
                "loosen the filters, add seeds or change the model",
            )
        return True

    async def _drain_neighbours(self) -> None:
        """Wait for the neighbours of every stored row, so the run ends with all of them."""
        neighbours = self.ctx.neighbours
        if neighbours is None:
            return
        deadline = time.monotonic() + NEIGHBOUR_DRAIN_S
        while neighbours.pending and neighbours.alive and time.monotonic() < deadline:
            await asyncio.to_thread(self.collect_neighbours, 0.5)
            if self.lease_lost:
                return
        if self.buffer or self.late:
            self.start_commit()
            await self.finish_commit()

    def _useless(self) -> dict[str, str]:
        """Why a run stops after that many useless answers in a row, in plain words."""
        n = self.useless
        if self.last_useless_failed:
            return {
                "stop_reason": "backend_failing",
                "error": f"{n} generation requests in a row failed after retries; "
                f"last error: {self.ctx.last_error}",
            }
        return {
            "stop_reason": "unparseable_output",
            "error": f"{n} generation answers in a row had no task in them; check the model "
            f"and its mode (completion or chat); last answer: {self.ctx.last_unparseable!r}",
        }

    async def _stop_for_shutdown(self) -> None:
        """Keep what was decided, drop what is in flight, and hand the run back at once:
        another worker resumes it, and the stop does not count as a lost attempt."""
        await self._cancel_tasks()
        await self.finish_commit()
        if self.buffer:
            self.start_commit()
            await self.finish_commit()
        if self.ctx.lease is not None:
            await asyncio.to_thread(release, self.ctx.engine, self.ctx.lease)

    async def _cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.cancel()
        self.waiters.clear()
