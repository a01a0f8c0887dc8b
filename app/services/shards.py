"""A run in shards: several workers execute one run at once, each holding a lease on its part
(app/leases.py, `job_part`) with its share of the target, the caps and the model's concurrency.

Shares are fixed when the run is created, so each shard knows what it answers for without asking
the others: the shares of the target add up to the target, and those of a cap to the cap, so
neither is ever overshot however the shards interleave. Novelty across shards is the dataset's
own rule (app/pipeline/storage.py: every commit group checks what other writers accepted), so
nothing about it is special here. PostgreSQL only: SQLite has one writer at a time, and one
process per run is what it can feed.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from app import leases
from app.errors import InvalidInput
from app.models import JobPart, Run
from app.schemas.common import ErrorItem
from app.schemas.runs import Caps, RunCreate, ShardPublic
from app.settings import Settings
from app.strategies import get_strategy

# A part's counters, in the names of the run's own columns (a part's state holds them).
COUNTERS: tuple[str, ...] = ("requests", "prompt_tokens", "completion_tokens", "cost")
COUNTERS += ("candidates", "accepted", "rejected", "instances")


def check_shards(*, session: Session, settings: Settings, body: RunCreate) -> None:
    """Refuse shards the service cannot honour, naming the field."""
    n = body.shards
    if n == 1:
        return
    problem = None
    if n > settings.max_run_shards:
        problem = (
            f"at most {settings.max_run_shards} (SELFINSTRUCT_MAX_RUN_SHARDS)",
            f"at most SELFINSTRUCT_MAX_RUN_SHARDS ({settings.max_run_shards})",
        )
    elif session.get_bind().dialect.name != "postgresql":
        problem = (
            "several workers share a run on PostgreSQL only; on SQLite a run is one process "
            "(set DATABASE_URL to a PostgreSQL database, or send shards: 1)",
            "PostgreSQL only (this service runs on SQLite)",
        )
    elif n > body.target:
        problem = (
            f"each shard needs a share of the target ({body.target})",
            f"at most `target` ({body.target})",
        )
    elif not get_strategy(body.strategy).shardable:
        problem = (
            f"strategy {body.strategy} uses each of its sources once, from one queue",
            f"not for a strategy that uses each of its sources once ({body.strategy})",
        )
    if problem is not None:
        raise InvalidInput(
            f"shards: {n} is not possible: {problem[0]}.",
            errors=[ErrorItem(field="shards", reason=problem[1])],
        )


def split(total: int, n: int) -> list[int]:
    """`total` in `n` whole shares that add up to it, the larger ones first."""
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def shard_caps(caps: Caps, n: int) -> list[dict[str, Any]]:
    """Each shard's share of the run's caps (a cap of None stays None)."""
    requests = split(caps.max_requests, n) if caps.max_requests is not None else [None] * n
    tokens = split(caps.max_tokens, n) if caps.max_tokens is not None else [None] * n
    cost = caps.max_cost / n if caps.max_cost is not None else None
    return [
        {"max_requests": r, "max_tokens": t, "max_cost": cost}
        for r, t in zip(requests, tokens, strict=True)
    ]


def add_shards(session: Session, run: Run, body: RunCreate) -> None:
    """Queue the run's parts, each with its share written in its state."""
    n = body.shards
    states = [
        {"target": target, "caps": caps, **dict.fromkeys(COUNTERS, 0)}
        for target, caps in zip(split(body.target, n), shard_caps(body.caps, n), strict=True)
    ]
    leases.add_parts(session, Run, run.id, n, states=states)


def parts_of(session: Session, run_ids: list[int]) -> dict[int, list[JobPart]]:
    """The parts of these runs, by run id, in shard order."""
    if not run_ids:
        return {}
    rows = session.exec(
        select(JobPart)
        .where(*leases.part_of(Run), col(JobPart.job_id).in_([str(i) for i in run_ids]))
        .order_by(col(JobPart.job_id), col(JobPart.part))
    )
    found: dict[int, list[JobPart]] = {}
    for part in rows:
        found.setdefault(int(part.job_id), []).append(part)
    return found


def shard_public(part: JobPart) -> ShardPublic:
    s = part.state
    return ShardPublic(
        shard=part.part,
        status=part.status,
        worker_id=part.worker_id,
        target=int(s.get("target", 0)),
        accepted=int(s.get("accepted", 0)),
        rejected=int(s.get("rejected", 0)),
        candidates=int(s.get("candidates", 0)),
        requests=int(s.get("requests", 0)),
        prompt_tokens=int(s.get("prompt_tokens", 0)),
        completion_tokens=int(s.get("completion_tokens", 0)),
        cost=float(s.get("cost", 0.0)),
        in_flight=int(s.get("in_flight", 0)) if part.status == "running" else 0,
        accepted_per_s=float(s.get("accepted_per_s", 0.0)),
        claims=part.lease_epoch,
        stop_reason=s.get("stop_reason"),
        error=part.error,
    )
