"""Only the lease that holds a run can end it: a worker that lost its lease (stalled, then
taken over) and comes back to finish is refused, even when it took the run back since under the
same name (the claim's epoch fences it), and the holder's finish lands once."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.leases import claim_run
from app.main import create_app
from app.models import Run, RunEvent, RunStatus
from app.pipeline.ending import finish
from app.settings import Settings
from tests.conftest import _wipe

pytestmark = pytest.mark.both_databases


def test_a_stale_holders_finish_is_refused_and_the_holders_lands_once(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_factory(embedded_worker=False)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        run_id = client.post("/v1/datasets/default/runs", json={"target": 3}).json()["id"]
    engine = make_engine(settings)
    try:
        stale = claim_run(engine, worker_id="worker-a", run_id=run_id, lease_seconds=-1, attempts=3)
        assert stale is not None and stale.row_id == run_id
        # worker-a stalls past its lease; worker-b takes the run over, then stalls too, and
        # worker-a (the same process, woken up) claims it once more
        taken = claim_run(engine, worker_id="worker-b", run_id=run_id, lease_seconds=-1, attempts=3)
        assert taken is not None and taken.epoch == stale.epoch + 1
        holder = claim_run(
            engine, worker_id="worker-a", run_id=run_id, lease_seconds=30, attempts=3
        )
        assert holder is not None and holder.epoch == stale.epoch + 2

        with caplog.at_level(logging.WARNING, logger="selfinstruct.pipeline"):
            ended = [
                finish(
                    engine,
                    run_id=run_id,
                    status=RunStatus.failed,
                    stop_reason="error",
                    error=f"{old.owner}'s late failure",
                    lease=old,
                )
                for old in (stale, taken)
            ]
        assert ended == [False, False]
        refusals = [r.getMessage() for r in caplog.records if "is refused" in r.getMessage()]
        assert len(refusals) == 2 and "worker-b" in refusals[1]
        with Session(engine) as session:
            run = session.exec(select(Run).where(Run.id == run_id)).one()
            assert run.status == RunStatus.running and run.error is None

        assert finish(
            engine,
            run_id=run_id,
            status=RunStatus.succeeded,
            stop_reason="target_reached",
            lease=holder,
        )
        assert not finish(  # ended once: a second finish, even the holder's, changes nothing
            engine,
            run_id=run_id,
            status=RunStatus.failed,
            stop_reason="error",
            lease=holder,
        )
        with Session(engine) as session:
            run = session.exec(select(Run).where(Run.id == run_id)).one()
            assert run.status == RunStatus.succeeded and run.error is None
            ends = session.exec(
                select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == "end")
            ).all()
            assert len(ends) == 1 and ends[0].data["status"] == "succeeded"
    finally:
        engine.dispose()
        _wipe(settings.db_url)
