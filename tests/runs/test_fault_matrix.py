"""kill -9 of a worker at each phase of each kind of job (claimed, running, committing,
finishing), at the fault points the code exposes (app/faults.py), never at timed moments: the
next worker finishes the job with nothing lost and nothing twice, the job ends exactly once,
and the death counts toward the attempt cap only when no progress was committed.

`make test` keeps one case per kind; the whole matrix is in the `slow` tier (`make test-all`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine
from app.faults import ENV
from app.main import create_app
from app.models import (
    Evaluation,
    EvaluationEvent,
    EvaluationSample,
    JudgementEvent,
    JudgementJob,
    Run,
    RunEvent,
    TaskJudgement,
)
from app.settings import Settings
from tests.conftest import _wipe
from tests.judge.conftest import JUDGE_MODEL, JudgeStub, judge_endpoints
from tests.runs.conftest import STUB_MODEL, assert_run_matches_rows

# Every case on both databases in `make test-all`; `make test` keeps one phase per kind, on SQLite.
pytestmark = [pytest.mark.both_databases, pytest.mark.postgres_slow]

LEASE_S = 1.5
# the cases `make test` runs (with finetune's in tests/finetune/test_finetune_faults.py)
KEPT = {("run", "committing"), ("judgement", "finishing"), ("evaluation", "running")}
PHASES = ("claimed", "running", "committing", "finishing")


def cases(kind: str) -> list[Any]:
    return [
        pytest.param(phase, marks=() if (kind, phase) in KEPT else pytest.mark.slow, id=phase)
        for phase in PHASES
    ]


@pytest.fixture
def world(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[TestClient, Callable[[str | None], int]]]:
    """The API (no worker of its own) and a way to run `selfinstruct worker --once`."""
    stub = JudgeStub()  # generates, answers chats and judges
    stub.start()
    endpoints = judge_endpoints(stub)
    settings = settings_factory(
        endpoints=endpoints, embedded_worker=False, finetune_workers=0, data_dir=tmp_path
    )
    _wipe(settings.db_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFINSTRUCT_")}
    env.update(
        DATABASE_URL=settings.db_url,
        SELFINSTRUCT_DATA_DIR=str(tmp_path),
        SELFINSTRUCT_ENDPOINTS=json.dumps(endpoints),
        SELFINSTRUCT_WORKER_LEASE_SECONDS=str(LEASE_S),
        SELFINSTRUCT_WORKER_POLL_SECONDS="0.1",
        SELFINSTRUCT_FINETUNE_WORKERS="0",
    )

    def worker(fault: str | None) -> int:
        """Run one worker until nothing waits (or it dies); its exit code."""
        own = {**env, ENV: fault} if fault else env
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "worker", "--once"],
            env=own,
            capture_output=True,
            timeout=120,
        )
        if done.returncode not in (0, -9) or os.environ.get("DEBUG_FAULTS"):
            print(done.stderr.decode()[-3000:])
            assert done.returncode in (0, -9)
        return done.returncode

    try:
        with TestClient(create_app(settings)) as client:
            yield client, worker
    finally:
        stub.stop()
        _wipe(settings.db_url)


def died_then_finished(worker: Callable[[str | None], int], fault: str) -> None:
    assert worker(fault) == -9, "the fault point was not reached"
    time.sleep(LEASE_S + 0.2)  # the dead worker's lease runs out
    assert worker(None) == 0


@pytest.mark.parametrize("phase", cases("run"))
def test_a_run_survives_a_kill_at_each_phase(
    world: tuple[TestClient, Callable[[str | None], int]], db_url: str, phase: str
) -> None:
    client, worker = world
    run_id = client.post(
        "/v1/datasets/default/runs", json={"target": 6, "model": STUB_MODEL}
    ).json()["id"]
    died_then_finished(worker, f"run:{phase}")
    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "succeeded", run
    assert run["counters"]["accepted"] == 6
    assert_run_matches_rows(db_url, run_id)  # nothing lost, nothing stored twice
    engine = make_engine(Settings(database_url=db_url))
    with Session(engine) as session:
        ends = session.exec(
            select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == "end")
        ).all()
        row = session.get(Run, run_id)
    engine.dispose()
    assert len(ends) == 1
    assert row is not None and row.lease_epoch == 2
    # progress committed before the death (the finish of a complete run) costs no attempt
    assert row.lost_count == (0 if phase == "finishing" else 1)


@pytest.mark.parametrize("phase", cases("judgement"))
def test_a_judgement_job_survives_a_kill_at_each_phase(
    world: tuple[TestClient, Callable[[str | None], int]], db_url: str, phase: str
) -> None:
    client, worker = world
    created = client.post("/v1/datasets/default/judgements", json={"model": JUDGE_MODEL})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    died_then_finished(worker, f"judgement:{phase}")
    done = client.get(f"/v1/judgements/{job_id}").json()
    assert done["status"] == "succeeded", done
    progress = done["progress"]
    assert progress["total"] > 0 and progress["done"] == progress["total"]
    engine = make_engine(Settings(database_url=db_url))
    with Session(engine) as session:
        judged = session.exec(
            select(TaskJudgement.task_id).where(TaskJudgement.judgement_job_id == job_id)
        ).all()
        ends = session.exec(
            select(JudgementEvent).where(
                JudgementEvent.judgement_job_id == job_id, JudgementEvent.kind == "end"
            )
        ).all()
        row = session.get(JudgementJob, job_id)
    engine.dispose()
    assert len(judged) == len(set(judged)) == progress["done"]  # each task judged once
    assert len(ends) == 1
    assert row is not None and row.lease_epoch == 2
    assert row.lost_count == (0 if phase == "finishing" else 1)


@pytest.mark.parametrize("phase", cases("evaluation"))
def test_an_evaluation_survives_a_kill_at_each_phase(
    world: tuple[TestClient, Callable[[str | None], int]], db_url: str, phase: str
) -> None:
    client, worker = world
    created = client.post(
        "/v1/evaluations", json={"models": [STUB_MODEL], "dataset": "default", "limit": 5}
    )
    assert created.status_code == 202, created.text
    evaluation_id = created.json()["id"]
    died_then_finished(worker, f"evaluation:{phase}")
    done = client.get(f"/v1/evaluations/{evaluation_id}").json()
    assert done["status"] == "succeeded", done
    engine = make_engine(Settings(database_url=db_url))
    with Session(engine) as session:
        samples = session.exec(
            select(EvaluationSample).where(EvaluationSample.evaluation_id == evaluation_id)
        ).all()
        ends = session.exec(
            select(EvaluationEvent).where(
                EvaluationEvent.evaluation_id == evaluation_id, EvaluationEvent.kind == "end"
            )
        ).all()
        row = session.get(Evaluation, evaluation_id)
    engine.dispose()
    assert len(samples) == 5 and all(s.answers[STUB_MODEL]["text"] for s in samples)
    assert len(ends) == 1
    assert row is not None and row.lease_epoch == 2
    assert row.lost_count == (0 if phase == "finishing" else 1)


def test_a_run_that_kills_its_worker_three_times_fails_with_the_count(
    world: tuple[TestClient, Callable[[str | None], int]],
) -> None:
    """Each worker dies before it commits anything; the fourth claim ends the run as
    `worker_lost` (job_attempts, 3) instead of handing it to a fourth victim."""
    client, worker = world
    run_id = client.post(
        "/v1/datasets/default/runs", json={"target": 6, "model": STUB_MODEL}
    ).json()["id"]
    for _ in range(3):
        assert worker("run:running") == -9
        time.sleep(LEASE_S + 0.2)
    assert worker("run:running") == 0  # it claims nothing to execute: the run failed at claim
    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "failed", run
    assert run["stop_reason"] == "worker_lost"
    assert "died 3 times" in run["error"] and "no progress committed" in run["error"]
    assert run["counters"]["accepted"] == 0
