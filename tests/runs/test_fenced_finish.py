"""Only the worker that holds a run can end it: a worker that lost its lease (stalled, then
taken over) and comes back to finish is refused, and the new holder's finish lands once."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.leases import claim_run
from app.main import create_app
from app.models import Run, RunEvent, RunStatus
from app.pipeline.storage import finish
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
        assert claim_run(engine, worker_id="worker-a", run_id=run_id, lease_seconds=30) == run_id
        # worker-a stalls past its lease; worker-b takes the run over (what claim writes)
        with engine.begin() as conn:
            conn.execute(sa.update(Run).where(Run.id == run_id).values(worker_id="worker-b"))

        with caplog.at_level(logging.WARNING, logger="selfinstruct.pipeline"):
            ended = finish(
                engine,
                run_id=run_id,
                status=RunStatus.failed,
                stop_reason="error",
                error="worker-a's late failure",
                worker_id="worker-a",
            )
        assert ended is False
        assert any("worker-a is refused" in r.getMessage() for r in caplog.records)
        with Session(engine) as session:
            run = session.exec(select(Run).where(Run.id == run_id)).one()
            assert run.status == RunStatus.running and run.error is None

        assert finish(
            engine,
            run_id=run_id,
            status=RunStatus.succeeded,
            stop_reason="target_reached",
            worker_id="worker-b",
        )
        assert not finish(  # ended once: a second finish, even the holder's, changes nothing
            engine,
            run_id=run_id,
            status=RunStatus.failed,
            stop_reason="error",
            worker_id="worker-b",
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
