"""The one lease machinery (app/leases.py) that runs, judgement jobs, evaluations and fine-tune
jobs share:
a holder that keeps dying with no progress ends its job as `worker_lost` with the count, at
each kind's cap; a graceful stop and committed progress do not count; a stale lease can neither
renew nor write; and a worker takes the oldest waiting job of any kind, so none starves."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.db import make_engine
from app.leases import (
    Leased,
    add_parts,
    cancel,
    claim,
    claim_next,
    job_event,
    part_of,
    progressed,
    release,
    renew,
)
from app.main import create_app
from app.models import (
    Dataset,
    Evaluation,
    EvaluationEvent,
    FineTuningJobEventRow,
    FineTuningJobRow,
    JobPart,
    JudgementEvent,
    JudgementJob,
    Run,
    RunEvent,
)
from app.settings import Settings
from app.strategies import DEFAULT_STRATEGY
from tests.conftest import _wipe

pytestmark = pytest.mark.both_databases

# the settings' defaults
CAPS: dict[Leased, int] = {Run: 3, JudgementJob: 3, Evaluation: 3, FineTuningJobRow: 2}


@pytest.fixture
def engine(settings_factory: Callable[..., Settings]) -> Iterator[Engine]:
    settings = settings_factory(embedded_worker=False, finetune_workers=0)
    assert (settings.job_attempts, settings.finetune_attempts) == (3, 2)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)):  # migrated, with the `default` dataset
        pass
    engine = make_engine(settings)
    yield engine
    engine.dispose()
    _wipe(settings.db_url)


def queue(engine: Engine, model: Leased) -> object:
    with Session(engine, expire_on_commit=False) as session:
        dataset = session.exec(select(Dataset).where(Dataset.name == "default")).one()
        assert dataset.id is not None
        row: Run | JudgementJob | Evaluation | FineTuningJobRow
        if model is Run:
            row = Run(dataset_id=dataset.id, strategy=DEFAULT_STRATEGY, target=1, model="stub")
        elif model is JudgementJob:
            row = JudgementJob(dataset_id=dataset.id, model="judge", backend="openai")
        elif model is Evaluation:
            row = Evaluation(dataset_id=dataset.id, models=["stub"])
        else:
            row = FineTuningJobRow(id=f"ftjob-{uuid.uuid4().hex[:12]}", model="m", status="queued")
        session.add(row)
        session.commit()
        return row.id


def end_events(engine: Engine, model: Leased, row_id: object) -> list[dict[str, object]]:
    with Session(engine) as session:
        if model is Run:
            rows = session.exec(
                select(RunEvent.data).where(RunEvent.run_id == row_id, RunEvent.kind == "end")
            ).all()
        elif model is JudgementJob:
            rows = session.exec(
                select(JudgementEvent.data).where(
                    JudgementEvent.judgement_job_id == row_id, JudgementEvent.kind == "end"
                )
            ).all()
        elif model is Evaluation:
            rows = session.exec(
                select(EvaluationEvent.data).where(
                    EvaluationEvent.evaluation_id == row_id, EvaluationEvent.kind == "end"
                )
            ).all()
        else:
            rows = session.exec(
                select(FineTuningJobEventRow.data).where(
                    FineTuningJobEventRow.job_id == row_id, FineTuningJobEventRow.level == "error"
                )
            ).all()
    return list(rows)


@pytest.mark.parametrize("model", list(CAPS), ids=lambda m: m.__name__)
def test_a_job_whose_worker_keeps_dying_fails_as_worker_lost_with_the_count(
    engine: Engine, model: Leased
) -> None:
    cap = CAPS[model]
    row_id = queue(engine, model)
    # A lease already expired at its claim: as if each worker died right after claiming.
    for death in range(cap):
        lease = claim(
            engine, model, worker_id=f"w{death}", lease_seconds=-1, attempts=cap, row_id=row_id
        )
        assert lease is not None and lease.epoch == death + 1
    assert claim(engine, model, worker_id="next", lease_seconds=30, attempts=cap) is None
    with Session(engine) as session:
        row = session.get(model, row_id)
        assert row is not None
        assert (row.status, row.lost_count, row.worker_id) == ("failed", cap, f"w{cap - 1}")
        message = row.error["message"] if isinstance(row.error, dict) else row.error
        assert f"died {'twice' if cap == 2 else f'{cap} times'}" in str(message)
        assert "worker_lost" in str(row.error)
        if isinstance(row, Run):
            assert row.state["stop_reason"] == "worker_lost"
        if isinstance(row, JudgementJob):
            assert row.stop_reason == "worker_lost"
    assert len(end_events(engine, model, row_id)) == 1  # it ended once
    # ...and nobody claims it again
    assert claim(engine, model, worker_id="later", lease_seconds=30, attempts=cap) is None


def test_a_graceful_stop_and_committed_progress_cost_no_attempt(engine: Engine) -> None:
    run_id = queue(engine, Run)

    def lost_count() -> int:
        with Session(engine) as session:
            row = session.get(Run, run_id)
            assert row is not None
            return row.lost_count

    died = claim(engine, Run, worker_id="a", lease_seconds=-1, attempts=3)
    assert died is not None
    stopped = claim(engine, Run, worker_id="b", lease_seconds=30, attempts=3)
    assert stopped is not None and lost_count() == 1  # a's death counted
    assert release(engine, stopped)  # b stops on purpose (a deploy)
    busy = claim(engine, Run, worker_id="c", lease_seconds=-1, attempts=3)
    assert busy is not None and lost_count() == 1  # b's stop cost nothing
    with engine.begin() as conn:  # c commits progress, then dies
        assert conn.execute(sa.update(Run).where(busy.held()).values(progressed())).rowcount
    again = claim(engine, Run, worker_id="d", lease_seconds=-1, attempts=3)
    assert again is not None and lost_count() == 0  # a death after progress does not count
    for worker in ("e", "f"):
        assert claim(engine, Run, worker_id=worker, lease_seconds=-1, attempts=3) is not None
    assert lost_count() == 2
    assert claim(engine, Run, worker_id="g", lease_seconds=30, attempts=3) is None  # the third
    assert lost_count() == 3


def test_a_stale_lease_can_neither_renew_nor_release(engine: Engine) -> None:
    run_id = queue(engine, Run)
    stale = claim(engine, Run, worker_id="a", lease_seconds=-1, attempts=3)
    holder = claim(engine, Run, worker_id="a", lease_seconds=30, attempts=3)  # the same name
    assert stale is not None and holder is not None and holder.row_id == run_id
    assert not renew(engine, stale, lease_seconds=30)
    assert not release(engine, stale)
    assert renew(engine, holder, lease_seconds=30)
    with Session(engine) as session:
        row = session.get(Run, run_id)
        assert row is not None and holder.holds(row) and not stale.holds(row)


@pytest.mark.parametrize("first", [Evaluation, Run], ids=lambda m: m.__name__)
def test_the_oldest_waiting_job_of_any_kind_is_claimed_first(engine: Engine, first: Leased) -> None:
    second: Leased = Run if first is Evaluation else Evaluation
    ids = {first: queue(engine, first), second: queue(engine, second)}
    claimed = []
    for worker in ("a", "b"):
        lease = claim_next(
            engine, [Run, Evaluation], worker_id=worker, lease_seconds=30, attempts=lambda m: 3
        )
        assert lease is not None
        claimed.append((lease.model, lease.row_id))
    assert claimed == [(first, ids[first]), (second, ids[second])]
    assert (
        claim_next(engine, [Run, Evaluation], worker_id="c", lease_seconds=30, attempts=lambda m: 3)
        is None
    )


@pytest.mark.parametrize("model", list(CAPS), ids=lambda m: m.__name__)
def test_a_cancel_ends_any_kind_once_and_its_holder_loses_the_lease(
    engine: Engine, model: Leased
) -> None:
    row_id = queue(engine, model)
    lease = claim(engine, model, worker_id="a", lease_seconds=30, attempts=3)
    assert lease is not None
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(model, row_id)
        for _ in range(2):  # idempotent
            row = cancel(session, row)
            assert row.status == "cancelled" and row.finished_at is not None
    assert not renew(engine, lease, lease_seconds=30)  # the holder stops at its next renewal
    assert not release(engine, lease)
    with Session(engine) as session:
        if model is FineTuningJobRow:
            events = session.exec(
                select(FineTuningJobEventRow.message).where(FineTuningJobEventRow.job_id == row_id)
            ).all()
            assert events.count("Job cancelled") == 1
        else:
            table = job_event(model, row_id, "x", {}).__class__
            events = session.exec(select(table.data)).all()  # type: ignore[attr-defined]
            assert sum(e.get("status") == "cancelled" for e in events) == 1


def test_a_job_held_in_parts_gives_each_part_its_own_lease(engine: Engine) -> None:
    """Two workers hold two parts of one run at once; one part's takeover fences only that
    part's old holder and counts only against that part; a cancel of the run ends both."""
    run_id = queue(engine, Run)
    with Session(engine) as session:
        add_parts(session, Run, run_id, 2)
        session.commit()
    mine = part_of(Run, run_id)
    first = claim(engine, JobPart, worker_id="a", lease_seconds=30, attempts=3, where=mine)
    second = claim(engine, JobPart, worker_id="b", lease_seconds=-1, attempts=3, where=mine)
    assert first is not None and second is not None and first.row_id != second.row_id
    assert (
        claim(engine, JobPart, worker_id="c", lease_seconds=30, attempts=3, where=part_of(Run, 0))
        is None
    )
    # b dies; c takes its part over (the only claimable one), a keeps the other
    taken = claim(engine, JobPart, worker_id="c", lease_seconds=30, attempts=3, where=mine)
    assert taken is not None and taken.row_id == second.row_id and taken.epoch == second.epoch + 1
    assert renew(engine, first, lease_seconds=30) and renew(engine, taken, lease_seconds=30)
    assert not renew(engine, second, lease_seconds=30)
    with Session(engine, expire_on_commit=False) as session:
        parts = {p.id: p for p in session.exec(select(JobPart)).all()}
        assert (parts[first.row_id].lost_count, parts[taken.row_id].lost_count) == (0, 1)
        cancel(session, session.get(Run, run_id))
    assert not renew(engine, first, lease_seconds=30)
    assert not renew(engine, taken, lease_seconds=30)
    with Session(engine) as session:
        assert {p.status for p in session.exec(select(JobPart)).all()} == {"cancelled"}
