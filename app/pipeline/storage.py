"""Commit groups: the verdicts of about half a second of work, the spend behind them and the
run's counters (and a shard's), in one transaction. The end of a run is app/pipeline/ending.py.

Novelty across processes. Runs of one dataset may execute in several workers, each with its own
copy of the pool, while users import seeds and review or edit tasks. Every commit group takes
the dataset's row lock first (PostgreSQL: a row lock; SQLite: the database write lock), as every
writer of the dataset's tasks does (app/services/dataset_lock.py), so they happen one at a time
and the dataset's task ids commit in order. Inside it, the group reads what others did since
this run last looked: tasks added (by id, above the highest id seen) and, when the dataset's
change clock moved, tasks changed (new text, accepted again, or no longer accepted). Each
accepted verdict is checked against the added and changed tasks it was not decided against; one
that now scores above the threshold is stored as rejected (`too_similar`) instead. So no two
accepted tasks of a dataset score above the threshold against each other, whichever process or
person accepted them.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlmodel import Session, col, select

from app import faults
from app.db import retry_transient
from app.leases import part_of
from app.models import (
    JobPart,
    JSONType,
    Run,
    RunEvent,
    RunStatus,
    Task,
    TaskJudgement,
    TaskStatus,
    utcnow,
)
from app.pipeline.context import (
    NEIGHBOURS,
    PENDING,
    PoolRow,
    RunContext,
    Tally,
    Verdict,
)
from app.pipeline.stages import drop, neighbours
from app.services.dataset_lock import changed_since, lock
from app.services.decontamination import mark_accepted, refresh_dependents_of
from app.services.runs import counters
from filters.language import UNKNOWN
from filters.novelty import Neighbour, NoveltyVerdict, RecentItems, merge_verdicts

log = logging.getLogger("selfinstruct.pipeline")


@dataclass
class Committed:
    """What a commit group did, for the driver to apply to its in-memory pool."""

    running: bool  # False: cancelled or taken over; nothing was written
    run: Run | None = None
    part: JobPart | None = None  # the shard executed, when the run has several
    stored: dict[str, int] = field(default_factory=dict)  # pending key -> task id
    demoted: list[Verdict] = field(default_factory=list)
    foreign: list[PoolRow] = field(default_factory=list)  # tasks others added, accepted
    changed: list[PoolRow] = field(default_factory=list)  # tasks others changed, accepted now
    withdrawn: list[int] = field(default_factory=list)  # tasks others changed, not accepted now
    clock: datetime | None = None  # the dataset's change clock these were read at
    awaiting: dict[int, int] = field(default_factory=dict)  # neighbour query -> task id


# A stored row's neighbours that arrived after its commit: (task id, best score, neighbours).
LateNeighbours = tuple[int, float, list[dict[str, Any]]]


class Seen(Protocol):
    """Where a reader of a dataset's pool last looked: a run (RunContext), or a worker's warm
    pool between runs (app/pipeline/pool_cache.py)."""

    dataset_id: int
    watermark: int  # the highest task id seen
    clock: datetime  # the dataset's change clock when it last looked


def commit_group(
    ctx: RunContext,
    verdicts: list[Verdict],
    tally: Tally,
    foreign_seen: RecentItems,
    live: dict[str, Any],
    late: list[LateNeighbours] | None = None,
) -> Committed:
    """One transaction: the dataset sync, task rows, candidate events, counters. Runs in a
    thread; reads `ctx` only for values that do not change while it runs. A transient database
    error (a deadlock, SQLite's busy timeout) runs the whole transaction again (app.db), with
    each verdict as it was before the failed try: a demotion is decided anew. Once it has
    committed accepted tasks, the datasets that name this one as an evaluation set get their
    contamination marks refreshed (app/services/decontamination.py)."""
    before = [(v.status, v.reason, v.detail, v.query, v.max_rouge, v.nearest) for v in verdicts]

    def attempt() -> Committed:
        for v, (status, reason, detail, query, max_rouge, nearest) in zip(
            verdicts, before, strict=True
        ):
            v.status, v.reason, v.detail, v.query = status, reason, detail, query
            v.max_rouge, v.nearest = max_rouge, nearest
        return _commit_once(ctx, verdicts, tally, foreign_seen, live, late)

    done = retry_transient(f"run {ctx.run_id}: commit", attempt)
    if done.running and any(v.status == TaskStatus.accepted for v in verdicts):
        refresh_dependents_of(ctx.engine, ctx.dataset_id)
    return done


def _commit_once(
    ctx: RunContext,
    verdicts: list[Verdict],
    tally: Tally,
    foreign_seen: RecentItems,
    live: dict[str, Any],
    late: list[LateNeighbours] | None,
) -> Committed:
    with Session(ctx.engine, expire_on_commit=False) as session:
        clock = lock(session, ctx.dataset_id)
        run = session.exec(select(Run).where(Run.id == ctx.run_id).with_for_update()).one()
        part = _part(session, ctx)
        # Cancelled meanwhile, or taken over by another worker after this one lost its lease
        # (a stalled process): storing now would write the same work twice.
        lost = ctx.lease is not None and not ctx.lease.holds(part or run)
        if run.status != RunStatus.running or lost:
            session.rollback()
            return Committed(running=False, run=run)
        foreign, changed, withdrawn = others_since(session, ctx, clock)
        fresh = RecentItems()  # what this commit learnt: after `foreign_seen`, in that order
        for row in [*foreign, *changed]:
            fresh.append(row.id, row.instruction)
        demoted = _demote_near_copies(ctx, verdicts, foreign_seen, fresh)
        accepted = [v for v in verdicts if v.status == TaskStatus.accepted]
        task_ids = _new_task_ids(session, len(verdicts))
        judged = [v for v in verdicts if v.judgement is not None]
        judgement_ids = dict(
            zip(map(id, judged), new_ids(session, "judgement", len(judged)), strict=True)
        )
        stored = {v.key: i for v, i in zip(verdicts, task_ids, strict=True) if v.key is not None}
        ids = {**ctx.stored_ids, **stored}
        now = utcnow()
        rows = [
            _row(ctx, v, task_id, ids, now, judgement_ids.get(id(v)))
            for v, task_id in zip(verdicts, task_ids, strict=True)
        ]
        conn = session.connection()
        if rows:
            # Core executemany: the ORM's unit of work cost about 1 ms a row here, on the
            # thread the event loop shares the GIL with.
            conn.execute(sa.insert(Task), rows)
            mark_accepted(  # decontamination: near-copies of evaluation tasks are marked
                session,
                dataset_id=ctx.dataset_id,
                tasks=[
                    (r["id"], r["instruction"], r["instances"])
                    for r in rows
                    if r["status"] == TaskStatus.accepted.value
                ],
            )
            conn.execute(
                sa.insert(RunEvent),
                [
                    {
                        "run_id": ctx.run_id,
                        "kind": "candidate",
                        "created_at": now,
                        "data": {
                            "task_id": row["id"],
                            "instruction": row["instruction"],
                            "status": v.status.value,
                            "reason": v.reason,
                            "score": v.max_rouge,
                            **({"rating": v.judgement.rating} if v.judgement else {}),
                        },
                    }
                    for v, row in zip(verdicts, rows, strict=True)
                ],
            )
        if judged:
            conn.execute(
                sa.insert(TaskJudgement),
                [
                    {
                        "id": judgement_ids[id(v)],
                        "task_id": row["id"],
                        "rating": v.judgement.rating,
                        "rationale": v.judgement.rationale,
                        "judge_model": v.judgement.model,
                        "prompt_version": v.judgement.prompt_version,
                        "run_id": ctx.run_id,
                        "created_at": now,
                    }
                    for v, row in zip(verdicts, rows, strict=True)
                    if v.judgement is not None
                ],
            )
        if late:
            conn.execute(
                sa.update(Task)
                .where(col(Task.id) == sa.bindparam("task_id"))
                .values(
                    max_rouge=sa.bindparam("best"), nearest=sa.bindparam("near", type_=JSONType)
                ),
                [
                    {
                        "task_id": task_id,
                        "best": best,
                        "near": [{**n, "task_id": _task_id(n["task_id"], ids)} for n in near],
                    }
                    for task_id, best, near in late
                ],
            )
        if part is not None:
            _add_shard_counters(session, run, part, verdicts, accepted, tally, live)
            live = _live_of_shards(session, run, part)
        _add_counters(run, verdicts, accepted, tally, live)
        if verdicts:  # the holder's death after this is not a lost attempt (app/leases.py)
            (part or run).progressed = True
        session.add(run)
        trouble = tally.trouble()
        if trouble is not None:
            trouble["group"] = run.state.get("groups", 0)
            session.add(RunEvent(run_id=ctx.run_id, kind="llm_errors", data=trouble))
        if verdicts or trouble is not None:
            session.add(RunEvent(run_id=ctx.run_id, kind="counters", data=counter_data(run)))
        if verdicts:
            faults.point("run:committing")
        session.commit()
        return Committed(
            running=True,
            run=run,
            part=part,
            stored=stored,
            demoted=demoted,
            foreign=foreign,
            changed=changed,
            withdrawn=withdrawn,
            clock=clock,
            awaiting={
                v.query: row["id"]
                for v, row in zip(verdicts, rows, strict=True)
                if v.query is not None
            },
        )


def _part(session: Session, ctx: RunContext) -> JobPart | None:
    """The shard this execution holds, locked after its run (the order every writer keeps)."""
    if ctx.share.part_id is None:
        return None
    return session.exec(
        select(JobPart).where(JobPart.id == ctx.share.part_id).with_for_update()
    ).one()


def _add_shard_counters(
    session: Session,
    run: Run,
    part: JobPart,
    verdicts: list[Verdict],
    accepted: list[Verdict],
    tally: Tally,
    live: dict[str, Any],
) -> None:
    """A shard's own figures (its part's state), beside the run's sums."""
    s = dict(part.state)
    add = {
        "requests": tally.requests,
        "prompt_tokens": tally.prompt_tokens,
        "completion_tokens": tally.completion_tokens,
        "cost": tally.cost,
        "candidates": len(verdicts),
        "accepted": len(accepted),
        "rejected": len(verdicts) - len(accepted),
        "instances": sum(len(v.instances) for v in accepted),
    }
    for name, value in add.items():
        s[name] = s.get(name, 0) + value
    s.update(live)
    part.state = s
    part.updated_at = utcnow()
    session.add(part)


def _live_of_shards(session: Session, run: Run, part: JobPart) -> dict[str, Any]:
    """The run's live figures: the sums of its running shards' latest ones."""
    states = session.exec(
        select(JobPart.state).where(
            *part_of(Run, run.id), JobPart.status == "running", JobPart.id != part.id
        )
    ).all()
    live = {"in_flight": 0, "requests_per_s": 0.0, "accepted_per_s": 0.0}
    for state in [*states, part.state]:
        for name in live:
            live[name] += state.get(name, 0)
    return {name: round(value, 3) for name, value in live.items()}


def others_since(
    session: Session, ctx: Seen, clock: datetime
) -> tuple[list[PoolRow], list[PoolRow], list[int]]:
    """What other writers did since this reader last looked: the tasks they accepted (above
    the highest id seen), and, only when the dataset's change clock moved (to `clock`), the
    tasks they changed, split into accepted now and no longer accepted. A run reads it under
    the dataset's lock; a warm pool without it, as load_pool does (the clock read first)."""
    columns = (Task.id, Task.instruction, Task.instances, Task.origin, Task.language)
    added = session.exec(
        select(*columns, Task.holdout_key)  # type: ignore[call-overload]
        .where(
            Task.dataset_id == ctx.dataset_id,
            Task.status == TaskStatus.accepted.value,
            col(Task.id) > ctx.watermark,
        )
        .order_by(col(Task.id))
    )
    foreign = [_pool_row(row) for row in added]
    changed: list[PoolRow] = []
    withdrawn: list[int] = []
    if clock <= ctx.clock:
        return foreign, changed, withdrawn
    rows = session.exec(
        select(*columns, Task.holdout_key, Task.status)  # type: ignore[call-overload]
        .where(
            Task.dataset_id == ctx.dataset_id,
            col(Task.id) <= ctx.watermark,
            changed_since(ctx.clock),
        )
        .order_by(col(Task.id))
    )
    for *row, status in rows:
        if status == TaskStatus.accepted.value:
            changed.append(_pool_row(row))
        else:
            withdrawn.append(row[0])
    return foreign, changed, withdrawn


def _pool_row(row: Any) -> PoolRow:
    task_id, instruction, instances, origin, language, key = row
    return PoolRow(task_id, instruction, list(instances), str(origin), language or UNKNOWN, key)


def absorb(ctx: RunContext, done: Committed) -> None:
    """Bring the run's pool in line with a commit: its stored ids, its demotions taken out
    again, and what other writers did taken in; then where the next commit reads from."""
    ctx.stored_ids.update(done.stored)
    for v in done.demoted:
        drop(ctx, v)
    ctx.learn(done.foreign, done.changed, done.withdrawn)
    ctx.watermark = max([ctx.watermark, *done.stored.values(), *(r.id for r in done.foreign)])
    if done.clock is not None:
        ctx.clock = max(ctx.clock, done.clock)


def _demote_near_copies(
    ctx: RunContext, verdicts: list[Verdict], seen: RecentItems, fresh: RecentItems
) -> list[Verdict]:
    """Accepted verdicts that score above the threshold against a task another writer accepted
    after the verdict was decided (in `seen` from the verdict's mark on, or `fresh`) become
    `too_similar` rejections."""
    demoted = []
    threshold = ctx.params.filters.rouge_threshold
    for v in verdicts:
        if v.status != TaskStatus.accepted or v.foreign_mark >= len(seen) + len(fresh):
            continue
        text = v.candidate.instruction
        check = seen.check(
            text, since=min(v.foreign_mark, len(seen)), threshold=threshold, k=NEIGHBOURS
        )
        if len(fresh):
            later = fresh.check(text, since=0, threshold=threshold, k=NEIGHBOURS)
            check = merge_verdicts(check, later, NEIGHBOURS)
        if check.novel:
            continue
        earlier = NoveltyVerdict(
            novel=True,
            max_score=v.max_rouge or 0.0,
            threshold=check.threshold,
            nearest=tuple(Neighbour(n["task_id"], n["score"]) for n in v.nearest),
        )
        merged = merge_verdicts(earlier, check, NEIGHBOURS)
        v.status, v.reason, v.detail = TaskStatus.rejected, check.reason, check.detail
        v.query = None  # its neighbours are these, not the ones still on their way
        v.max_rouge, v.nearest = merged.max_score, neighbours(merged.nearest)
        demoted.append(v)
    return demoted


def _new_task_ids(session: Session, n: int) -> list[int]:
    """Ids for the group's rows before inserting them, so neighbours and lineage that name
    tasks of the same group are written once, final."""
    return new_ids(session, "task", n)


def new_ids(session: Session, table: str, n: int) -> list[int]:
    """`n` ids of `table` (task or judgement) drawn before inserting. PostgreSQL draws them
    from the table's sequence; SQLite is past the database write lock here (a transaction
    that wrote the dataset row), so nobody else inserts meanwhile."""
    if n == 0:
        return []
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        return list(
            conn.execute(
                sa.text(
                    "SELECT nextval(pg_get_serial_sequence(:table, 'id')) "
                    "FROM generate_series(1, :n)"
                ),
                {"table": table, "n": n},
            ).scalars()
        )
    top = conn.execute(sa.text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar_one()
    return list(range((top or 0) + 1, (top or 0) + 1 + n))


def _row(
    ctx: RunContext,
    v: Verdict,
    task_id: int,
    ids: dict[str, int],
    now: datetime,
    judgement_id: int | None = None,
) -> dict[str, Any]:
    return {
        "rating": v.judgement.rating if v.judgement else None,
        "judgement_id": judgement_id,
        "id": task_id,
        "dataset_id": ctx.dataset_id,
        "instruction": v.candidate.instruction,
        "language": v.candidate.language,
        "instances": v.instances,
        "is_classification": v.is_classification,
        "origin": v.candidate.origin,
        "status": v.status.value,
        "rejection_reason": v.reason,
        "rejection_detail": v.detail,
        "max_rouge": v.max_rouge,
        "nearest": [{**n, "task_id": _task_id(n["task_id"], ids)} for n in v.nearest],
        "run_id": ctx.run_id,
        "lineage": _lineage_ids(v.candidate.lineage, ids),
        "created_at": now,
        "updated_at": now,
    }


def _task_id(key: Any, ids: dict[str, int]) -> Any:
    """A neighbour's task id; a pending key becomes its id (None if it was never stored)."""
    if isinstance(key, str) and key.startswith(PENDING):
        return ids.get(key)
    return key


def _lineage_ids(lineage: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    """Prompt examples (and an evolved task's parent) accepted a moment before the prompt was
    built carry pending keys."""
    examples = lineage.get("example_task_ids")
    parent = lineage.get("parent_task_id")
    pending = [str(e) for e in [*(examples or []), parent] if str(e).startswith(PENDING)]
    if not pending:
        return lineage

    def stored(key: Any) -> str | None:
        found = _task_id(key, ids)
        return None if found is None else str(found)

    out = {**lineage, "example_task_ids": [stored(e) for e in examples or []]}
    if parent is not None:
        out["parent_task_id"] = stored(parent)
    return out


def _add_counters(
    run: Run, verdicts: list[Verdict], accepted: list[Verdict], tally: Tally, live: dict[str, Any]
) -> None:
    reasons = Counter(v.reason for v in verdicts if v.status == TaskStatus.rejected)
    merged = Counter(run.rejected_by_reason)
    merged.update({k: n for k, n in reasons.items() if k})
    run.rejected_by_reason = dict(merged)
    run.requests += tally.requests
    run.failed_requests += tally.failed
    run.prompt_tokens += tally.prompt_tokens
    run.completion_tokens += tally.completion_tokens
    run.cost += tally.cost
    run.candidates += len(verdicts)
    run.accepted += len(accepted)
    run.rejected += len(verdicts) - len(accepted)
    run.instances += sum(len(v.instances) for v in accepted)
    state = dict(run.state)
    state["groups"] = state.get("groups", 0) + 1
    state["retries"] = state.get("retries", 0) + tally.retries
    state["unparseable_completions"] = state.get("unparseable_completions", 0) + tally.unparseable
    state["instances_wrong_language"] = state.get("instances_wrong_language", 0) + sum(
        v.wrong_language for v in verdicts
    )
    judgements = [v.judgement for v in verdicts if v.judgement is not None]
    if judgements:
        rated = Counter(j.rating for j in judgements if j.rating is not None)
        state["judged"] = state.get("judged", 0) + sum(rated.values())
        state["unjudged"] = state.get("unjudged", 0) + len(judgements) - sum(rated.values())
        state["ratings"] = dict(Counter(state.get("ratings", {})) + rated)
    state.update(live)
    run.state = state
    run.updated_at = utcnow()


def counter_data(run: Run) -> dict[str, Any]:
    """The counters as the API shows them, so stream and GET never disagree."""
    return counters(run).model_dump()
