"""One run, several workers: a run of `shards` is executed by several `selfinstruct worker`
processes at once on PostgreSQL, each holding its shard's lease (app/services/shards.py).

The model repeats a small list of instruction families (each family: variants one word apart,
so scoring above the novelty threshold against each other), so the shards keep proposing
near-copies of what the other just accepted: the target must still be met exactly, counters must
equal rows, and no two accepted tasks of the dataset may score above the threshold; also after
one worker is killed mid-run and the other takes its shard over.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db import make_engine, migrate
from app.faults import ENV
from app.main import create_app
from app.models import Task
from app.settings import Settings
from filters.rouge import rouge_l
from testbed.scripted_llm import WORDS, StubLLM
from tests.conftest import _wipe
from tests.runs.conftest import STUB_MODEL, assert_run_matches_rows

LEASE_S = 2.0
THRESHOLD = 0.7


class RepeatingLLM(StubLLM):
    """Every sentence it writes is one of a few families of near-copies."""

    def __init__(self, families: int = 40) -> None:
        super().__init__(seed=7)
        rng = random.Random(3)
        self.choices: list[str] = []
        for _ in range(families):
            words = rng.sample(WORDS, 8)
            for last in words[6:8]:  # two variants, one word apart: ROUGE-L 7/8 = 0.875
                self.choices.append(f"Describe the {' '.join(words[:6])} {last}.")

    def sentence(self, chinese: bool) -> str:
        return self.rng.choice(self.choices)


@pytest.fixture
def sharded(postgres_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The API on PostgreSQL (no worker of its own) and the environment of its workers."""
    stub = RepeatingLLM()
    stub.delay_s = 0.05  # both shards are in flight together
    stub.start()
    endpoints = [
        {
            "name": "stub",
            "base_url": stub.base_url,
            "models": [STUB_MODEL],
            "timeout_s": 5,
            "max_concurrency": 4,  # 2 for each shard: a shard takes several commit groups
        }
    ]
    settings = Settings(
        database_url=postgres_url,
        data_dir=tmp_path,
        endpoints=endpoints,  # type: ignore[arg-type]
        embedded_worker=False,
        finetune_workers=0,
    )
    migrate(settings)
    _wipe(postgres_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFINSTRUCT_")}
    env.update(
        DATABASE_URL=postgres_url,
        SELFINSTRUCT_DATA_DIR=str(tmp_path),
        SELFINSTRUCT_ENDPOINTS=json.dumps(endpoints),
        SELFINSTRUCT_WORKER_POLL_SECONDS="0.1",
        SELFINSTRUCT_FINETUNE_WORKERS="0",
    )
    try:
        with TestClient(create_app(settings)) as client:
            yield client, env
    finally:
        stub.stop()
        _wipe(postgres_url)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_until(
    client: TestClient, run_id: int, done: Any, timeout_s: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if done(run):
            return run  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, run
        time.sleep(0.1)


def accepted_pairs_above(db_url: str) -> list[tuple[str, str, float]]:
    engine = make_engine(Settings(database_url=db_url))
    try:
        with Session(engine) as session:
            texts = list(session.exec(select(Task.instruction).where(Task.status == "accepted")))
    finally:
        engine.dispose()
    scored = ((a, b, rouge_l(a, b)) for a, b in itertools.combinations(texts, 2))
    return [pair for pair in scored if pair[2] > THRESHOLD]


pytestmark = pytest.mark.real  # worker processes and PostgreSQL


@pytest.mark.parametrize("kill", [False, True], ids=["together", "one-killed"])
def test_two_workers_share_one_run_exactly(
    sharded: tuple[TestClient, dict[str, str]], postgres_url: str, tmp_path: Path, kill: bool
) -> None:
    client, env = sharded
    # A lease as short as a test can wait for when one dies; else long enough never to run out
    # on a loaded machine (a takeover of a live worker's shard is the lease doing its job).
    env = {**env, "SELFINSTRUCT_WORKER_LEASE_SECONDS": str(LEASE_S if kill else 60)}
    # kill -9 of one worker as its second group of verdicts commits (app/faults.py)
    doomed = {**env, ENV: "run:committing@2"} if kill else env
    logs = [tmp_path / "worker-0.log", tmp_path / "worker-1.log"]
    workers = [start_worker(doomed, logs[0]), start_worker(env, logs[1])]
    victim = workers[0]
    try:
        deadline = time.monotonic() + 60  # both poll before the run exists: each takes a shard
        while not all(log.exists() and "waiting" in log.read_text() for log in logs):
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers)
            time.sleep(0.05)
        body = {"target": 30, "model": STUB_MODEL, "language": "en", "shards": 2}
        created = client.post("/v1/datasets/default/runs", json=body)
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        assert [s["target"] for s in created.json()["shards"]] == [15, 15]
        if kill:
            assert victim.wait(timeout=60) == -signal.SIGKILL
            at_kill = client.get(f"/v1/runs/{run_id}").json()
            (lost,) = [s for s in at_kill["shards"] if f":{victim.pid}:" in str(s["worker_id"])]
            assert lost["status"] == "running", at_kill  # it died mid-shard
        run = wait_until(client, run_id, lambda r: r["status"] not in ("queued", "running"))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)
    assert run["status"] == "succeeded", run
    assert run["stop_reason"] == "target_reached"
    assert run["counters"]["accepted"] == 30
    assert [s["accepted"] for s in run["shards"]] == [15, 15]
    assert sum(s["candidates"] for s in run["shards"]) == run["counters"]["candidates"]
    assert sum(s["requests"] for s in run["shards"]) == run["counters"]["requests"]
    assert run["counters"]["rejected_by_reason"].get("too_similar", 0) > 0  # the families met
    assert_run_matches_rows(postgres_url, run_id)  # counters equal rows, nothing twice
    assert accepted_pairs_above(postgres_url) == []
    if kill:  # the survivor took the dead worker's shard over and finished it
        taken = run["shards"][lost["shard"]]
        assert taken["claims"] >= 2, run["shards"]
        assert f":{victim.pid}:" not in taken["worker_id"]
    else:  # each worker held one shard throughout and accepted its share
        assert [s["claims"] for s in run["shards"]] == [1, 1]
        assert len({s["worker_id"] for s in run["shards"]}) == 2


@pytest.mark.both_databases
def test_shards_the_service_cannot_honour_are_refused(client: TestClient, db_url: str) -> None:
    def refused(body: dict[str, Any]) -> str:
        response = client.post("/v1/datasets/default/runs", json={"target": 10, **body})
        assert response.status_code == 422, response.text
        (error,) = response.json()["errors"]
        assert error["field"] == "shards", error
        return str(response.json()["detail"])

    assert "SELFINSTRUCT_MAX_RUN_SHARDS" in refused({"shards": 17})
    refused({"shards": 0})
    if db_url.startswith("sqlite"):
        assert "PostgreSQL" in refused({"shards": 2})
    else:
        assert "target" in refused({"shards": 11})
        assert "backtranslate" in refused({"shards": 2, "strategy": "backtranslate"})
    assert client.get("/v1/datasets/default/runs").json()["count"] == 0  # nothing half-made
