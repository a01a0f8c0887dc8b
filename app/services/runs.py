"""Runs: create, read, cancel, and the event log that the stream and the dashboard read."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from app import leases
from app.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from app.llm import find_model, price_table
from app.models import Dataset, JudgementJob, Run, RunEvent, RunStatus
from app.schemas.common import ErrorItem
from app.schemas.runs import RunCounters, RunCreate, RunEventPublic, RunPublic
from app.services.dataset_lock import lock
from app.services.shards import add_shards, check_shards, parts_of, shard_public
from app.settings import Settings
from app.strategies import get_strategy

ACTIVE = (RunStatus.queued.value, RunStatus.running.value)


def create_run(*, session: Session, settings: Settings, dataset: Dataset, body: RunCreate) -> Run:
    entry = find_model(settings, body.model, session.get_bind())  # type: ignore[arg-type]
    if body.judge is not None:
        find_model(settings, body.judge.model, session.get_bind(), field="judge.model")  # type: ignore[arg-type]
    if body.target > settings.max_run_target:
        raise PayloadTooLarge(
            f"target {body.target} is above the limit of {settings.max_run_target} "
            "(SELFINSTRUCT_MAX_RUN_TARGET).",
            errors=[ErrorItem(field="target", reason=f"above {settings.max_run_target}")],
        )
    check_shards(session=session, settings=settings, body=body)
    # Take the dataset's row lock before counting, so concurrent creations queue here and each
    # counts the runs the previous one added (PostgreSQL: a row lock; SQLite: the write lock).
    assert dataset.id is not None
    lock(session, dataset.id)
    active = session.exec(
        select(func.count()).where(Run.dataset_id == dataset.id, col(Run.status).in_(ACTIVE))
    ).one()
    if active >= settings.max_active_runs_per_dataset:
        raise Conflict(
            f"Dataset '{dataset.name}' already has {active} queued or running runs "
            f"(SELFINSTRUCT_MAX_ACTIVE_RUNS_PER_DATASET); wait for one or cancel it.",
            errors=[ErrorItem(field="name", reason="too many active runs on this dataset")],
        )
    strategy = get_strategy(body.strategy)
    if body.topic and not strategy.uses_topic:
        raise InvalidInput(
            f"topic: {body.strategy} runs show no pool tasks to choose by topic; drop `topic`.",
            errors=[ErrorItem(field="topic", reason=f"not used by strategy {body.strategy}")],
        )
    strategy.check_model(entry)
    capped_by_cost = body.caps.max_cost is not None and entry.backend == "openai"
    if capped_by_cost and not price_table(settings).known(entry.id):
        raise InvalidInput(
            f"caps.max_cost: model '{entry.id}' has no known price, so the cap could never "
            "stop the run; add its price to SELFINSTRUCT_PRICES or use max_requests or "
            "max_tokens.",
            errors=[ErrorItem(field="caps.max_cost", reason="the model has no known price")],
        )
    strategy.check_dataset(session=session, dataset=dataset, params=body)
    assert dataset.id is not None
    run = Run(
        dataset_id=dataset.id,
        strategy=body.strategy,
        backend=entry.backend,
        model=entry.id,
        params=body.model_dump(mode="json"),
        target=body.target,
        shards=body.shards,
        status=RunStatus.queued,
    )
    session.add(run)
    session.flush()
    assert run.id is not None
    if body.shards > 1:
        add_shards(session, run, body)
    session.add(RunEvent(run_id=run.id, kind="status", data={"status": RunStatus.queued.value}))
    session.commit()
    session.refresh(run)
    return run


def get_run(*, session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        moved = moved_job_id(session, run_id)
        if moved is not None:  # a judgement job stored as a run before migration 0008
            raise NotFound(
                f"Run {run_id} does not exist: it was a judgement job, which now has its own "
                f"kind; read it at /v1/judgements/{moved}."
            )
        raise NotFound(f"Run {run_id} does not exist.")
    return run


def moved_job_id(session: Session, run_id: int) -> int | None:
    """The judgement job that was run `run_id` before migration 0008 moved it, if one was."""
    return session.exec(select(JudgementJob.id).where(JudgementJob.former_run_id == run_id)).first()


def list_runs(*, session: Session, dataset: Dataset) -> list[Run]:
    return list(
        session.exec(select(Run).where(Run.dataset_id == dataset.id).order_by(col(Run.id).desc()))
    )


def cancel_run(*, session: Session, run: Run) -> Run:
    """Idempotent: a finished run is returned as it is; the worker stops within a second."""
    result: Run = leases.cancel(session, run)
    return result


def events_after(engine: Engine, *, run_id: int, after: int, limit: int = 500) -> list[RunEvent]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(RunEvent)
                .where(RunEvent.run_id == run_id, col(RunEvent.id) > after)
                .order_by(col(RunEvent.id))
                .limit(limit)
            )
        )


def run_status(engine: Engine, *, run_id: int) -> str | None:
    with Session(engine) as session:
        return session.exec(select(Run.status).where(Run.id == run_id)).first()


def counters(run: Run) -> RunCounters:
    return RunCounters(
        requests=run.requests,
        failed_requests=run.failed_requests,
        prompt_tokens=run.prompt_tokens,
        completion_tokens=run.completion_tokens,
        cost=run.cost,
        candidates=run.candidates,
        accepted=run.accepted,
        rejected=run.rejected,
        rejected_by_reason=dict(run.rejected_by_reason),
        instances=run.instances,
        retries=run.state.get("retries", 0),
        unparseable_completions=run.state.get("unparseable_completions", 0),
        instances_wrong_language=run.state.get("instances_wrong_language", 0),
        in_flight=run.state.get("in_flight", 0) if run.status == RunStatus.running else 0,
        requests_per_s=run.state.get("requests_per_s", 0.0),
        accepted_per_s=run.state.get("accepted_per_s", 0.0),
        judged=run.state.get("judged", 0),
        unjudged=run.state.get("unjudged", 0),
        ratings=run.state.get("ratings", {}),
    )


def run_public(*, session: Session, run: Run, dataset_name: str) -> RunPublic:
    return runs_public(session=session, runs=[run], dataset_name=dataset_name)[0]


def runs_public(*, session: Session, runs: list[Run], dataset_name: str) -> list[RunPublic]:
    """Runs as the API shows them; a sharded run with each shard's worker and figures."""
    parts = parts_of(session, [r.id for r in runs if r.shards > 1 and r.id is not None])
    out = []
    for run in runs:
        assert run.id is not None
        out.append(
            RunPublic(
                id=run.id,
                dataset=dataset_name,
                status=RunStatus(run.status),
                strategy=run.strategy,
                model=run.model,
                target=run.target,
                params=run.params,
                counters=counters(run),
                stop_reason=run.state.get("stop_reason"),
                error=run.error,
                worker_id=run.worker_id,
                shards=[shard_public(p) for p in parts.get(run.id, [])],
                created_at=run.created_at,
                started_at=run.started_at,
                finished_at=run.finished_at,
            )
        )
    return out


def event_public(event: RunEvent) -> dict[str, Any]:
    assert event.id is not None
    return RunEventPublic(
        id=event.id,
        run_id=event.run_id,
        kind=event.kind,
        data=event.data,
        created_at=event.created_at,
    ).model_dump(mode="json")
