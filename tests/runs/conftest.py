"""Runs against a scripted model endpoint, with the embedded worker polling fast."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.main import create_app
from app.models import Run, RunEvent, Task
from app.settings import Settings
from testbed.scripted_llm import StubLLM
from tests.conftest import _wipe

STUB_MODEL = "stub-model"


@pytest.fixture
def stub() -> Iterator[StubLLM]:
    server = StubLLM()
    server.start()
    yield server
    server.stop()


def stub_settings(
    settings_factory: Callable[..., Settings], stub: StubLLM, **overrides: Any
) -> Settings:
    endpoint = {
        "name": "stub",
        "base_url": stub.base_url,
        "models": [STUB_MODEL],
        "max_retries": 1,
        "timeout_s": 5,
    }
    return settings_factory(
        endpoints=[endpoint], worker_poll_seconds=0.05, worker_lease_seconds=5, **overrides
    )


@pytest.fixture
def api(settings_factory: Callable[..., Settings], stub: StubLLM) -> Iterator[TestClient]:
    settings = stub_settings(settings_factory, stub)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


def wait_for_run(client: TestClient, run_id: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] in {"succeeded", "failed", "cancelled"}:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish in {timeout_s}s: {run}")


def assert_run_matches_rows(db_url: str, run_id: int) -> Run:
    """Read the database itself: the run's counters equal its task rows (per status and
    rejection reason), one `candidate` event exists per row, and no accepted instruction of the
    dataset is stored twice. This is what a crash or a second writer would break."""
    engine = make_engine(Settings(database_url=db_url))
    try:
        with Session(engine) as session:
            run = session.exec(select(Run).where(Run.id == run_id)).one()
            rows = list(session.exec(select(Task).where(Task.run_id == run_id)))
            candidate_events = list(
                session.exec(
                    select(RunEvent.data).where(
                        RunEvent.run_id == run_id, RunEvent.kind == "candidate"
                    )
                )
            )
            accepted_in_dataset = list(
                session.exec(
                    select(Task.instruction).where(
                        Task.dataset_id == run.dataset_id, Task.status == "accepted"
                    )
                )
            )
    finally:
        engine.dispose()
    accepted = [r for r in rows if r.status == "accepted"]
    rejected = Counter(r.rejection_reason for r in rows if r.status == "rejected")
    assert run.candidates == len(rows), (run.candidates, len(rows))
    assert run.accepted == len(accepted), (run.accepted, len(accepted))
    assert run.rejected == sum(rejected.values())
    assert run.rejected_by_reason == dict(rejected)
    assert run.instances == sum(len(r.instances) for r in accepted)
    assert sorted(e["task_id"] for e in candidate_events) == sorted(r.id for r in rows)
    doubled = [i for i, n in Counter(accepted_in_dataset).items() if n > 1]
    assert not doubled, f"accepted twice: {doubled[:3]}"
    if run.status == "succeeded" and run.state.get("stop_reason") == "target_reached":
        assert run.accepted == run.target, (run.accepted, run.target)
    return run
