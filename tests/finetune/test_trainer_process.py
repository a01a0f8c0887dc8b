"""Each job trains in a child process of the worker that exits when the job ends: the worker's
memory goes back between jobs, and a trainer killed by the kernel (SIGKILL, as the out-of-memory
killer sends it) fails its job with the signal named while the worker lives on and takes the
next job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db import migrate
from app.main import create_app
from app.settings import Settings
from tests.conftest import _wipe
from tests.finetune.test_finetune_e2e import (  # noqa: F401 (a fixture)
    GREETINGS,
    _register_base,
    tiny_base_dir,
)
from tests.finetune.test_finetune_supervised import (
    HANG_GUARD_S,
    _long_job,
    children,
    events,
    running,
    user_env,
    wait_for,
    worker_pid,
)

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real

GB = 1e9


def rss(pid: int) -> int:
    """Resident bytes of one process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def short_job(client: TestClient, model: str) -> str:
    """Two steps on the tiny model: done in well under a second of training."""
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Reply with the single word {word}."},
                    {"role": "assistant", "content": word.upper()},
                ]
            }
        )
        for word in GREETINGS
    ]
    upload = client.post(
        "/v1/files",
        data={"purpose": "fine-tune"},
        files={"file": ("short.jsonl", "\n".join(lines).encode(), "application/jsonl")},
    )
    assert upload.status_code == 200, upload.text
    created = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": model,
            "training_file": upload.json()["id"],
            "max_seq_len": 64,
            "max_steps": 2,
            "seed": 3,
        },
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def finished(client: TestClient, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    return job if job["status"] in {"succeeded", "failed", "cancelled"} else None


@pytest.fixture
def api_and_worker(
    sqlite_url: str,
    tmp_path: Path,
    tiny_base_dir: Path,  # noqa: F811 (the fixture imported above)
) -> Iterator[tuple[TestClient, subprocess.Popen[bytes], str]]:
    """The API in this process, one `selfinstruct worker --kind finetune` beside it, and the id
    of a tiny base model jobs can start from."""
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path, embedded_worker=False)
    migrate(settings)
    _wipe(sqlite_url)
    model = _register_base(settings, tiny_base_dir)
    env = user_env(sqlite_url, tmp_path, worker_poll_seconds="0.2")
    env["OMP_NUM_THREADS"] = "1"
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--kind", "finetune", "--device", "cpu"],
        env=env,
        stdout=(tmp_path / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        with TestClient(create_app(settings)) as client:
            yield client, worker, model
    finally:
        left = children(worker.pid)
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        for pid in left:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        _wipe(sqlite_url)


@pytest.mark.real
def test_after_a_job_no_trainer_remains_and_the_worker_is_back_under_1_gb(
    sqlite_url: str, api_and_worker: tuple[TestClient, subprocess.Popen[bytes], str]
) -> None:
    client, worker, model = api_and_worker
    job_id = short_job(client, model)
    trainers: set[int] = set()

    def done() -> dict[str, Any] | None:
        trainers.update(children(worker.pid))  # seen while it trains
        return finished(client, job_id)

    job = wait_for("the job to finish", done)
    assert job["status"] == "succeeded", job
    assert worker_pid(sqlite_url, job_id) == worker.pid
    assert trainers, "the job trained in a child process of the worker"
    wait_for("the trainer to exit", lambda: not children(worker.pid))
    assert not any(running(pid) for pid in trainers)
    assert worker.poll() is None
    assert rss(worker.pid) < 1 * GB
    assert "torch" not in (Path(f"/proc/{worker.pid}/maps").read_text())  # never imported


@pytest.mark.real
def test_a_trainer_killed_by_sigkill_fails_its_job_and_the_worker_takes_the_next(
    sqlite_url: str, api_and_worker: tuple[TestClient, subprocess.Popen[bytes], str]
) -> None:
    client, worker, model = api_and_worker
    http: Any = client  # a TestClient is the httpx.Client those helpers take
    job_id = _long_job(http, model)
    wait_for(
        "the job to train",
        lambda: any(e["type"] == "metrics" for e in events(http, job_id, limit=5)),
    )
    (trainer,) = children(worker.pid)
    os.kill(trainer, signal.SIGKILL)

    job = wait_for("the job to fail", lambda: finished(client, job_id))
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "training_failed"
    message = job["error"]["message"]
    assert "killed by SIGKILL (signal 9)" in message, message
    assert "GB of memory at its largest" in message and "smaller batch_size" in message
    assert worker.poll() is None  # the worker lives on

    next_id = short_job(client, model)
    done = wait_for("the next job", lambda: finished(client, next_id), timeout_s=HANG_GUARD_S)
    assert done["status"] == "succeeded", done
    assert worker_pid(sqlite_url, next_id) == worker.pid  # taken by the same worker


def test_a_trainer_killed_by_a_signal_is_a_failure_naming_it_and_its_memory(
    tmp_path: Path,
) -> None:
    """What the launcher makes of a trainer that ended without a word: a signal and the memory
    it held, and a stop it asked for is no failure at all."""
    from training import launch
    from training.errors import TrainingError

    with pytest.raises(TrainingError) as killed:
        launch._outcome(-signal.SIGKILL, tmp_path, peak_rss=5_900_000_000, oom_killed=True)
    message = str(killed.value)
    assert "killed by SIGKILL (signal 9): the kernel's out-of-memory killer" in message
    assert "it held 5.90 GB of memory at its largest" in message
    (tmp_path / "stop").write_text("stop\n")
    assert launch._outcome(-signal.SIGTERM, tmp_path) is None
