"""A judgement job survives kill -9 of the serving process and judges each task once; and one
judgement job end to end through a real llama.cpp server with the bundled model as the judge."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.db import make_engine, migrate
from app.main import create_app
from app.settings import EndpointConfig, Settings
from testbed.live import free_port, serve_api, wait_ready
from tests.conftest import LLAMA_ALIAS, _wipe
from tests.judge.conftest import JUDGE_MODEL, JudgeStub, scripted_rating

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real


def _judgements_per_task(db_url: str, job_id: int) -> dict[int, int]:
    engine = make_engine(Settings(database_url=db_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT task_id, count(*) FROM judgement WHERE judgement_job_id = :job "
                    "GROUP BY task_id"
                ),
                {"job": job_id},
            ).all()
    finally:
        engine.dispose()
    return {int(task_id): int(n) for task_id, n in rows}


@pytest.mark.both_databases
def test_kill9_mid_judgement_job_then_restart_judges_each_task_once(
    settings_factory: Callable[..., Settings], judge_stub: JudgeStub, tmp_path: Path
) -> None:
    settings = settings_factory()
    _wipe(settings.db_url)
    judge_stub.delay_s = 0.3
    env = {
        **os.environ,
        "DATABASE_URL": settings.db_url,
        "SELFINSTRUCT_DATA_DIR": str(tmp_path),
        "SELFINSTRUCT_ENDPOINTS": json.dumps(
            [
                {
                    "name": "judge",
                    "base_url": judge_stub.base_url,
                    "models": [JUDGE_MODEL],
                    "max_concurrency": 2,
                }
            ]
        ),
        "SELFINSTRUCT_WORKER_LEASE_SECONDS": "2",
        "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.1",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve_api(env, port, tmp_path / "server.log")
    try:
        wait_ready(base)
        job = httpx.post(
            f"{base}/v1/datasets/default/judgements", json={"model": JUDGE_MODEL}
        ).json()
        total = job["progress"]["total"]
        assert total > 20
        for _ in range(600):
            if httpx.get(f"{base}/v1/judgements/{job['id']}").json()["progress"]["done"] >= 4:
                break
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        before = _judgements_per_task(settings.db_url, job["id"])
        assert 4 <= len(before) < total
        server = serve_api(env, port, tmp_path / "server.log")
        wait_ready(base)
        deadline = time.monotonic() + 120
        while (done := httpx.get(f"{base}/v1/judgements/{job['id']}").json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, done
            time.sleep(0.2)
        assert done["status"] == "succeeded", done
        assert done["progress"]["done"] == total
        after = _judgements_per_task(settings.db_url, job["id"])
        assert len(after) == total and set(after.values()) == {1}  # each task judged once
        tasks = httpx.get(f"{base}/v1/datasets/default/tasks", params={"limit": 1000}).json()
        for task in tasks["data"]:
            assert task["rating"] == scripted_rating(task["instruction"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        _wipe(settings.db_url)


@pytest.fixture
def sqlite_settings(sqlite_url: str, tmp_path: Path) -> Settings:
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path / "data")
    migrate(settings)
    return settings


@pytest.mark.real
def test_bundled_model_judges_through_a_real_llama_cpp_server(
    sqlite_settings: Settings, llama_server: str
) -> None:
    """Mechanics, not quality: the grammar reaches the server, every task gets a stored
    judgement with the judge's id and prompt version, and counts agree."""
    endpoint = EndpointConfig(
        name="llamacpp",
        base_url=llama_server,
        models=[LLAMA_ALIAS],
        structured_output="grammar",
    )
    settings = sqlite_settings.model_copy(update={"endpoints": [endpoint]})
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        client.post("/v1/datasets", json={"name": "judged"})
        seeds = [
            {
                "id": f"s{i}",
                "name": f"s{i}",
                "instruction": instruction,
                "instances": [{"input": "", "output": output}],
                "is_classification": False,
            }
            for i, (instruction, output) in enumerate(
                [
                    ("Name three primary colours.", "Red, blue and yellow."),
                    ("把这句话翻译成英文：早上好。", "Good morning."),
                ]
            )
        ]
        assert client.post("/v1/datasets/judged/seeds", json=seeds).status_code < 300
        job_id = client.post("/v1/datasets/judged/judgements", json={"model": LLAMA_ALIAS}).json()[
            "id"
        ]
        deadline = time.monotonic() + 600
        while (job := client.get(f"/v1/judgements/{job_id}").json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "succeeded", job
        progress = job["progress"]
        assert progress["done"] == progress["total"] == 2
        # the grammar leaves the model no answer without a rating
        assert progress["judged"] == 2 and progress["unjudged"] == 0
        assert sum(progress["ratings"].values()) == 2
        assert progress["prompt_tokens"] > 0 and progress["completion_tokens"] > 0
        tasks = client.get("/v1/datasets/judged/tasks").json()["data"]
        versions = set()
        for task in tasks:
            judgement = task["judgement"]
            assert task["rating"] in ("A", "B", "C", "D")
            assert judgement["rating"] == task["rating"]
            assert judgement["judge_model"] == LLAMA_ALIAS
            assert judgement["judgement_job_id"] == job_id
            assert judgement["rationale"].strip()
            versions.add(judgement["prompt_version"])
        assert versions == {"judge-v1:en", "judge-v1:zh"}
    _wipe(settings.db_url)
