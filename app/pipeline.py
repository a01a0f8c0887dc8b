"""The generation loop: sample examples → prompt → LLM → parse → filter → store, batch by batch.

Plain functions over the database. Every batch's verdicts are written in one transaction with
the run's counters and events, so a crash loses at most the batch in flight and the counters
always equal the rows. On resume, the pool (and its novelty index) is rebuilt from the database,
so no accepted task is lost or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.llm import ModelEntry, backend_for, find_model, price_table
from app.models import Dataset, Run, RunEvent, RunStatus, Task, TaskOrigin, TaskStatus, utcnow
from app.run_schemas import Caps, RunCreate
from app.services.runs import counters
from app.settings import Settings
from app.strategies import (
    Candidate,
    Pool,
    candidates_from,
    prompt_jobs,
    template_candidates,
    template_space,
)
from app.worker import renew_lease
from filters.heuristics import check_instruction
from filters.instances import filter_instances
from filters.novelty import Neighbour, NoveltyVerdict
from generators.base import Generation, SamplingParams
from generators.errors import GeneratorError
from generators.parsing import parse_classification_answer, parse_instances
from generators.prompts import (
    CLASSIFICATION_INSTANCE_SAMPLING,
    CLASSIFICATION_SAMPLING,
    INSTANCE_SAMPLING,
    PromptExample,
    build_classification_prompt,
    build_instance_prompt,
    to_chat_messages,
)

if TYPE_CHECKING:
    from app.worker import Worker

log = logging.getLogger("selfinstruct.pipeline")

MAX_FAILED_BATCHES = 3  # consecutive batches with no usable completion (failed or unparseable)
MAX_IDLE_BATCHES = 25  # consecutive batches that accepted nothing
NEIGHBOURS = 10


@dataclass
class Spend:
    """Requests and tokens of one step, added to the run's counters in the batch transaction."""

    requests: int = 0
    failed: int = 0
    retries: int = 0  # extra attempts the backend spent (429s, 5xx, timeouts), failed ones too
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    last_error: str | None = None
    completions: int = 0  # answers to generation prompts (not classification or instances)
    unparseable: int = 0  # of those, answers that held no task at all
    last_unparseable: str | None = None

    @property
    def useless(self) -> bool:
        """Nothing usable came back: every request failed, or every generation answer that
        arrived held no task (a model or proxy answering garbage)."""
        if self.requests and self.failed == self.requests:
            return True
        return self.completions > 0 and self.unparseable == self.completions

    def trouble(self) -> dict[str, Any] | None:
        """What went wrong with the model in this batch, for the run's event log."""
        if not (self.failed or self.retries or self.unparseable):
            return None
        return {
            "requests": self.requests,
            "failed_requests": self.failed,
            "retries": self.retries,
            "unparseable_completions": self.unparseable,
            "last_error": self.last_error,
            "last_unparseable": self.last_unparseable,
        }


@dataclass
class Verdict:
    candidate: Candidate
    status: TaskStatus
    reason: str | None = None
    detail: str | None = None
    max_rouge: float | None = None
    nearest: list[dict[str, Any]] = field(default_factory=list)
    is_classification: bool | None = None
    instances: list[dict[str, str]] = field(default_factory=list)
    index_key: Any = None  # where an accepted candidate sits in the index until it is stored


class RunContext:
    """What one execution of a run needs; rebuilt from the database on every (re)start."""

    def __init__(
        self,
        *,
        engine: Engine,
        settings: Settings,
        run: Run,
        dataset: Dataset,
        model: ModelEntry,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.run_id: int = run.id  # type: ignore[assignment]
        self.dataset_id: int = dataset.id  # type: ignore[assignment]
        self.params = RunCreate.model_validate(run.params)
        self.language = self.params.language or (
            "zh" if dataset.language.startswith("zh") else "en"
        )
        self.heuristics = self.params.filters.heuristics.model_copy(
            update={"language": self.language}
        )
        self.backend = backend_for(settings, model)
        self.chat = model.mode == "chat"
        self.prices = price_table(settings)
        self.model_id = model.id
        self.pool = load_pool(engine, dataset_id=self.dataset_id)
        self.worker_id: str | None = None  # the lease holder; only it may store batches
        self.lineage = {
            "model": run.model,
            "strategy": self.params.strategy,
            "sampling": self.params.sampling.model_dump(),
            "run_id": self.run_id,
        }

    # --- LLM calls ---

    async def complete(
        self, texts: list[str], sampling: dict[str, Any], stop: tuple[str, ...], spend: Spend
    ) -> list[Generation | None]:
        """Complete each text; a failed request (after the backend's retries) becomes None."""
        if not texts:
            return []
        prompts: list[Any] = (
            [to_chat_messages(t, language=self.language) for t in texts] if self.chat else texts
        )
        params = SamplingParams(**sampling, stop=stop)
        results = await self.backend.generate(prompts, params, return_exceptions=True)
        out: list[Generation | None] = []
        for result in results:
            spend.requests += 1
            if isinstance(result, GeneratorError):
                spend.failed += 1
                spend.retries += max(0, result.attempts - 1)
                spend.last_error = str(result)
                out.append(None)
                continue
            assert isinstance(result, Generation)
            spend.retries += result.retries
            spend.prompt_tokens += result.prompt_tokens
            spend.completion_tokens += result.completion_tokens
            # Priced by the catalogue id: servers often answer with a longer model name.
            spend.cost += self.prices.cost(
                self.model_id, result.prompt_tokens, result.completion_tokens
            )
            out.append(result)
        return out

    def sampling(self) -> dict[str, Any]:
        s = self.params.sampling
        return {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "seed": self.params.seed,
        }


def load_pool(engine: Engine, *, dataset_id: int) -> Pool:
    pool = Pool()
    with Session(engine) as session:
        rows = session.exec(
            select(Task.id, Task.instruction, Task.instances, Task.origin)
            .where(Task.dataset_id == dataset_id, Task.status == TaskStatus.accepted.value)
            .order_by(col(Task.id))
        )
        for task_id, instruction, instances, origin in rows:
            first = instances[0] if instances else {}
            example = PromptExample(
                id=str(task_id),
                instruction=instruction,
                input=first.get("input", ""),
                output=first.get("output", ""),
            )
            pool.add(example, seed=origin == TaskOrigin.seed.value)
    return pool


# --- filtering ---


def novelty(ctx: RunContext, cand: Candidate) -> NoveltyVerdict:
    """Exact verdict (a score of exactly the threshold passes), best score and top-10."""
    return ctx.pool.index.check(
        cand.instruction, threshold=ctx.params.filters.rouge_threshold, k=NEIGHBOURS
    )


def screen(
    ctx: RunContext, candidates: list[Candidate]
) -> tuple[list[Verdict], list[Candidate], list[NoveltyVerdict]]:
    """Heuristics and novelty against the pool as it is; survivors go on to the model steps."""
    rejected, survivors, checks, seen = [], [], [], set()
    for cand in candidates:
        cand.instruction = cand.instruction.strip()
        verdict = check_instruction(cand.instruction, ctx.heuristics)
        if not verdict.ok:
            rejected.append(Verdict(cand, TaskStatus.rejected, verdict.reason, verdict.detail))
            continue
        check = novelty(ctx, cand)
        if not check.novel:  # saves the model calls for a candidate that cannot pass
            rejected.append(
                Verdict(
                    cand,
                    TaskStatus.rejected,
                    check.reason,
                    check.detail,
                    max_rouge=check.max_score,
                    nearest=_neighbours(check.nearest),
                )
            )
            continue
        if cand.instruction in seen:  # the same line twice in one batch
            rejected.append(
                Verdict(
                    cand,
                    TaskStatus.rejected,
                    "duplicate_in_batch",
                    "the batch produced this instruction twice",
                )
            )
            continue
        seen.add(cand.instruction)
        survivors.append(cand)
        checks.append(check)
    return rejected, survivors, checks


async def classify(ctx: RunContext, survivors: list[Candidate], spend: Spend) -> list[bool | None]:
    if not ctx.params.classify:
        return [None] * len(survivors)
    prompts = [build_classification_prompt(c.instruction, language=ctx.language) for c in survivors]
    if not prompts:
        return []
    gens = await ctx.complete(
        [p.text for p in prompts],
        CLASSIFICATION_SAMPLING.as_dict(),
        prompts[0].stop_sequences,
        spend,
    )
    return [parse_classification_answer(g.text) if g else None for g in gens]


async def make_instances(
    ctx: RunContext, survivors: list[Candidate], labels: list[bool | None], spend: Spend
) -> list[list[dict[str, str]] | None]:
    """Instances per survivor: output-first for classification tasks, input-first otherwise."""
    out: list[list[dict[str, str]] | None] = [c.instances for c in survivors]
    if not ctx.params.generate_instances:
        return out
    todo = [i for i, c in enumerate(survivors) if c.instances is None]
    for output_first in (True, False):
        group = [i for i in todo if bool(labels[i]) is output_first]
        if not group:
            continue
        prompts = [
            build_instance_prompt(
                survivors[i].instruction,
                is_classification=output_first,
                language=ctx.language,
                max_instances=ctx.params.filters.max_instances,
            )
            for i in group
        ]
        sampling = CLASSIFICATION_INSTANCE_SAMPLING if output_first else INSTANCE_SAMPLING
        gens = await ctx.complete(
            [p.text for p in prompts], sampling.as_dict(), prompts[0].stop_sequences, spend
        )
        for i, gen in zip(group, gens, strict=True):
            out[i] = (
                parse_instances(
                    gen.text, output_first=output_first, finish_reason=gen.finish_reason
                )
                if gen
                else None
            )
    return out


def decide(
    ctx: RunContext,
    survivors: list[Candidate],
    labels: list[bool | None],
    instances: list[list[dict[str, str]] | None],
    checks: list[NoveltyVerdict],
    room: int,
) -> list[Verdict]:
    """Final verdicts in order; accepted ones join the index at once so later ones see them."""
    verdicts = []
    joined = 0  # accepted in this batch: until one joins, the screening checks still hold
    for cand, label, raw, screened in zip(survivors, labels, instances, checks, strict=True):
        kept: list[dict[str, str]] = []
        if raw is not None:
            result = filter_instances(raw, max_instances=ctx.params.filters.max_instances)
            kept = result.kept
        needs_instances = ctx.params.generate_instances or cand.instances is not None
        check = screened if joined == 0 else novelty(ctx, cand)
        v = Verdict(
            cand,
            TaskStatus.rejected,
            max_rouge=check.max_score,
            is_classification=label,
            nearest=_neighbours(check.nearest),
            instances=kept,
        )
        if not check.novel:
            v.reason, v.detail = check.reason, check.detail
        elif raw is None and needs_instances:
            v.reason, v.detail = "instance_generation_failed", "the model gave no usable answer"
        elif needs_instances and not kept:
            v.reason, v.detail = "no_valid_instances", "every generated instance was filtered out"
        elif room <= 0:
            v.reason, v.detail = "over_target", "the run reached its target in this batch"
        else:
            v.status, room = TaskStatus.accepted, room - 1
        verdicts.append(v)
        if v.status == TaskStatus.accepted:
            # Join the pool now: later candidates of this batch are compared with it.
            v.index_key = ("pending", ctx.run_id, len(verdicts))
            ctx.pool.index.add(v.index_key, cand.instruction)
            joined += 1
    return verdicts


def _neighbours(nearest: Sequence[Neighbour]) -> list[dict[str, Any]]:
    """Neighbours as stored; a candidate accepted earlier in this batch still has a pending key,
    which `store_batch` replaces with its task id."""
    return [{"task_id": key, "score": float(score)} for key, score in nearest]


# --- persistence ---


def store_batch(ctx: RunContext, verdicts: list[Verdict], spend: Spend) -> tuple[int, int]:
    """One transaction: task rows, run counters and events. Returns (accepted, rejected)."""
    accepted = [v for v in verdicts if v.status == TaskStatus.accepted]
    reasons = Counter(v.reason for v in verdicts if v.status == TaskStatus.rejected)
    with Session(ctx.engine, expire_on_commit=False) as session:
        run = session.exec(select(Run).where(Run.id == ctx.run_id).with_for_update()).one()
        # Cancelled while the batch was in flight, or taken over by another worker after this
        # one lost its lease (a stalled process): storing now would write the batch twice.
        lost = ctx.worker_id is not None and run.worker_id != ctx.worker_id
        if run.status != RunStatus.running or lost:
            for v in accepted:
                ctx.pool.index.remove(v.index_key)
            return 0, 0
        rows = []
        for v in verdicts:
            row = Task(
                dataset_id=ctx.dataset_id,
                instruction=v.candidate.instruction,
                instances=v.instances,
                is_classification=v.is_classification,
                origin=TaskOrigin.generated,
                status=v.status,
                rejection_reason=v.reason,
                rejection_detail=v.detail,
                max_rouge=v.max_rouge,
                nearest=v.nearest,
                run_id=ctx.run_id,
                lineage=v.candidate.lineage,
            )
            session.add(row)
            rows.append((v, row))
        session.flush()
        stored_ids = {v.index_key: row.id for v, row in rows if v.index_key is not None}
        for _, row in rows:
            if any(isinstance(n["task_id"], tuple) for n in row.nearest):
                row.nearest = [
                    {**n, "task_id": stored_ids.get(n["task_id"])}
                    if isinstance(n["task_id"], tuple)
                    else n
                    for n in row.nearest
                ]
                session.add(row)
        for v, row in rows:
            session.add(
                RunEvent(
                    run_id=ctx.run_id,
                    kind="candidate",
                    data={
                        "task_id": row.id,
                        "instruction": row.instruction,
                        "status": v.status.value,
                        "reason": v.reason,
                        "score": v.max_rouge,
                    },
                )
            )
        merged = Counter(run.rejected_by_reason)
        merged.update({k: n for k, n in reasons.items() if k})
        run.rejected_by_reason = dict(merged)
        run.requests += spend.requests
        run.failed_requests += spend.failed
        run.prompt_tokens += spend.prompt_tokens
        run.completion_tokens += spend.completion_tokens
        run.cost += spend.cost
        run.candidates += len(verdicts)
        run.accepted += len(accepted)
        run.rejected += len(verdicts) - len(accepted)
        run.instances += sum(len(v.instances) for v in accepted)
        state = dict(run.state)
        state["batches"] = state.get("batches", 0) + 1
        state["retries"] = state.get("retries", 0) + spend.retries
        state["unparseable_completions"] = (
            state.get("unparseable_completions", 0) + spend.unparseable
        )
        run.state = state
        run.updated_at = utcnow()
        session.add(run)
        trouble = spend.trouble()
        if trouble is not None:
            trouble["batch"] = state["batches"]
            session.add(RunEvent(run_id=ctx.run_id, kind="llm_errors", data=trouble))
        session.add(RunEvent(run_id=ctx.run_id, kind="counters", data=_counter_data(run)))
        session.commit()
        for v, row in rows:
            if v.status == TaskStatus.accepted:
                first = v.instances[0] if v.instances else {}
                example = PromptExample(
                    id=str(row.id),
                    instruction=row.instruction,
                    input=first.get("input", ""),
                    output=first.get("output", ""),
                )
                ctx.pool.machine.append(example)
    # The stored id replaces the pending key, so neighbours name real tasks.
    for v, row in rows:
        if v.status == TaskStatus.accepted:
            ctx.pool.index.remove(v.index_key)
            ctx.pool.index.add(row.id, row.instruction)
    return len(accepted), len(verdicts) - len(accepted)


def _counter_data(run: Run) -> dict[str, Any]:
    """The counters as the API shows them, so stream and GET never disagree."""
    return counters(run).model_dump()


def finish(
    engine: Engine, *, run_id: int, status: RunStatus, stop_reason: str, error: str | None = None
) -> None:
    with Session(engine, expire_on_commit=False) as session:
        run = session.exec(select(Run).where(Run.id == run_id).with_for_update()).one()
        if run.status != RunStatus.running:
            return
        run.status = status
        run.error = error
        run.finished_at = utcnow()
        run.updated_at = run.finished_at
        run.lease_expires_at = None
        run.state = {**run.state, "stop_reason": stop_reason}
        session.add(run)
        session.add(
            RunEvent(
                run_id=run_id,
                kind="end",
                data={
                    "status": status.value,
                    "stop_reason": stop_reason,
                    "error": error,
                    **_counter_data(run),
                },
            )
        )
        session.commit()


def stop_reason(run: Run, caps: Caps) -> str | None:
    if run.accepted >= run.target:
        return "target_reached"
    if caps.max_requests is not None and run.requests >= caps.max_requests:
        return "max_requests"
    if caps.max_tokens is not None and run.prompt_tokens + run.completion_tokens >= caps.max_tokens:
        return "max_tokens"
    if caps.max_cost is not None and run.cost >= caps.max_cost:
        return "max_cost"
    return None


def _reload(engine: Engine, run_id: int) -> Run:
    with Session(engine, expire_on_commit=False) as session:
        return session.exec(select(Run).where(Run.id == run_id)).one()


async def execute_run(
    *, engine: Engine, settings: Settings, run_id: int, worker: Worker | None = None
) -> None:
    """Drive a claimed run to a final state; returns early if it is cancelled or taken over."""
    run = _reload(engine, run_id)
    with Session(engine, expire_on_commit=False) as session:
        dataset = session.exec(select(Dataset).where(Dataset.id == run.dataset_id)).one()
        # the stream says so at once; the first batch's counters can be minutes away on a CPU
        session.add(RunEvent(run_id=run_id, kind="status", data={"status": "running"}))
        session.commit()
    try:
        ctx = RunContext(
            engine=engine,
            settings=settings,
            run=run,
            dataset=dataset,
            model=find_model(settings, run.model, engine),
        )
    except Exception as exc:  # unknown model after a settings change, bad params...
        finish(
            engine,
            run_id=run_id,
            status=RunStatus.failed,
            stop_reason="setup_failed",
            error=str(exc),
        )
        return
    failed_batches = idle_batches = 0
    worker_id = worker.worker_id if worker else run.worker_id or ""
    ctx.worker_id = worker_id or None
    while True:
        run = _reload(engine, run_id)
        if run.status != RunStatus.running or (worker and worker.stopping):
            return
        reason = stop_reason(run, ctx.params.caps)
        if reason:
            finish(engine, run_id=run_id, status=RunStatus.succeeded, stop_reason=reason)
            return
        if worker and not renew_lease(
            engine, run_id=run_id, worker_id=worker_id, lease_seconds=settings.worker_lease_seconds
        ):
            return
        batch_no = int(run.state.get("batches", 0))
        rng = random.Random(f"{ctx.params.seed}:{run_id}:{batch_no}")
        spend = Spend()
        try:
            verdicts = await _while_leased(
                _run_batch(ctx, run, rng, spend),
                engine=engine,
                run_id=run_id,
                worker_id=worker_id if worker else None,
                lease_seconds=settings.worker_lease_seconds,
            )
        except Exception as exc:
            log.exception("run %s failed in batch %s", run_id, batch_no)
            finish(
                engine,
                run_id=run_id,
                status=RunStatus.failed,
                stop_reason="error",
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        if verdicts is None:  # cancelled or taken over while the batch was in flight
            return
        accepted, _ = store_batch(ctx, verdicts, spend)
        failed_batches = failed_batches + 1 if spend.useless else 0
        idle_batches = 0 if accepted else idle_batches + 1
        if failed_batches >= MAX_FAILED_BATCHES:
            finish(
                engine,
                run_id=run_id,
                status=RunStatus.failed,
                **_useless_verdict(spend),
            )
            return
        if idle_batches >= MAX_IDLE_BATCHES or _templates_exhausted(ctx, run):
            finish(
                engine,
                run_id=run_id,
                status=RunStatus.failed,
                stop_reason="stalled",
                error=f"no candidate was accepted in {idle_batches} batches in a row; "
                "loosen the filters, add seeds or change the model",
            )
            return


async def _run_batch(ctx: RunContext, run: Run, rng: random.Random, spend: Spend) -> list[Verdict]:
    candidates = await gather_candidates(ctx, rng, spend)
    rejected, survivors, checks = screen(ctx, candidates)
    labels = await classify(ctx, survivors, spend)
    instances = await make_instances(ctx, survivors, labels, spend)
    return rejected + decide(
        ctx, survivors, labels, instances, checks, room=run.target - run.accepted
    )


async def _while_leased(
    batch: Coroutine[Any, Any, list[Verdict]],
    *,
    engine: Engine,
    run_id: int,
    worker_id: str | None,
    lease_seconds: float,
) -> list[Verdict] | None:
    """Run one batch while renewing the lease every third of it.

    A batch can outlast the lease (a model server that hangs, or asks for long Retry-After
    waits); without renewals another worker would take the run over and both would write it.
    None when the run was cancelled or taken over meanwhile: the batch is abandoned at once.
    """
    task = asyncio.ensure_future(batch)
    if worker_id is None:
        return await task
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=lease_seconds / 3)
            if done:
                return task.result()
            try:
                kept = await asyncio.to_thread(
                    renew_lease,
                    engine,
                    run_id=run_id,
                    worker_id=worker_id,
                    lease_seconds=lease_seconds,
                )
            except Exception:  # a database hiccup must not fail the run; store_batch re-checks
                log.warning("run %s: lease renewal failed; retrying", run_id, exc_info=True)
                continue
            if not kept:
                return None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _useless_verdict(spend: Spend) -> dict[str, str]:
    """Why a run stops after MAX_FAILED_BATCHES batches with nothing usable, in plain words."""
    if spend.failed:
        return {
            "stop_reason": "backend_failing",
            "error": f"{MAX_FAILED_BATCHES} batches in a row failed after retries; "
            f"last error: {spend.last_error}",
        }
    return {
        "stop_reason": "unparseable_output",
        "error": f"{MAX_FAILED_BATCHES} batches in a row got answers with no task in them "
        f"({spend.unparseable} of {spend.completions} in the last batch); check the model and "
        f"its mode (completion or chat); last answer: {spend.last_unparseable!r}",
    }


def _templates_exhausted(ctx: RunContext, run: Run) -> bool:
    spec = ctx.params.template
    return spec is not None and run.candidates >= 20 * template_space(spec)


async def gather_candidates(ctx: RunContext, rng: random.Random, spend: Spend) -> list[Candidate]:
    if ctx.params.strategy == "template":
        assert ctx.params.template is not None
        return template_candidates(
            ctx.params.template,
            n=ctx.params.prompt.prompts_per_batch * 4,
            rng=rng,
            lineage=ctx.lineage,
        )
    jobs = prompt_jobs(pool=ctx.pool, params=ctx.params, language=ctx.language, rng=rng)
    gens = await ctx.complete([j.text for j in jobs], ctx.sampling(), jobs[0].stop, spend)
    out: list[Candidate] = []
    for job, gen in zip(jobs, gens, strict=True):
        if gen is None:
            continue
        spend.completions += 1
        found = candidates_from(job, gen, ctx.lineage)
        if not found:
            spend.unparseable += 1
            spend.last_unparseable = gen.text[:200]
        out += found
    return out
