"""kill -9 of the API while a remote GPU worker trains a job over HTTP, on SQLite and PostgreSQL;
and the converse, a live but slow-starting fine-tune worker that must not be declared dead.

The other crash cases live beside the features they break: the serving process killed during a
run (tests/runs/test_runs_e2e.py) and a fine-tune worker killed during a job
(tests/finetune/test_finetune_e2e.py). Here the process that dies is the API a remote worker
reports to: the worker must wait for it to come back and finish the job, not fail it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.db import migrate
from app.finetune.remote import RemoteFinetuneWorker
from app.main import create_app
from app.settings import Settings
from testbed.live import free_port, serve_api, wait_ready
from tests.conftest import _wipe
from tests.finetune.test_finetune_e2e import (
    LONG_SUPERVISED,
    _greet_dataset,
    _register_base,
    _tiny_lora_job,
    tiny_base_dir,  # noqa: F401  (a fixture)
)

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real

WORKER_TOKEN = "remote-worker-secret-9"
TOTAL_STEPS = 40


@pytest.mark.both_databases
def test_api_killed_while_a_remote_worker_trains_then_the_job_completes(
    db_url: str,
    tmp_path: Path,
    tiny_base_dir: Path,  # noqa: F811
) -> None:
    settings = Settings(database_url=db_url, data_dir=tmp_path / "api")
    migrate(settings)
    _wipe(db_url)
    base_model = _register_base(settings, tiny_base_dir)
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "SELFINSTRUCT_DATA_DIR": str(tmp_path / "api"),
        "SELFINSTRUCT_WORKER_TOKEN": WORKER_TOKEN,
        "SELFINSTRUCT_EMBEDDED_WORKER": "false",
        "SELFINSTRUCT_WORKER_LEASE_SECONDS": "30",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve_api(env, port, tmp_path / "server.log")
    worker_thread: threading.Thread | None = None
    try:
        wait_ready(base)
        with httpx.Client(base_url=base, timeout=30) as client:
            _greet_dataset(client)  # type: ignore[arg-type]
            job_id = _tiny_lora_job(
                client,
                base_model,
                max_steps=TOTAL_STEPS,
                seed=4,
                checkpoint_interval=5,
                method=LONG_SUPERVISED,
            )
        remote = RemoteFinetuneWorker(
            api_url=base,
            token=WORKER_TOKEN,
            work_dir=tmp_path / "api" / "remote-worker",  # storage the API mounts too
            device="cpu",
        )
        worker_thread = threading.Thread(target=remote.run_forever, kwargs={"once": True})
        worker_thread.start()
        deadline = time.monotonic() + 120
        while (
            httpx.get(f"{base}/v1/fine_tuning/jobs/{job_id}").json()["progress"].get("step", 0) < 3
        ):
            assert time.monotonic() < deadline and worker_thread.is_alive()
            time.sleep(0.05)

        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        time.sleep(1.0)  # the worker's reports fail meanwhile
        server = serve_api(env, port, tmp_path / "server.log")
        wait_ready(base)

        worker_thread.join(timeout=180)
        assert not worker_thread.is_alive()
        with httpx.Client(base_url=base, timeout=30) as client:
            done = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            assert done["status"] == "succeeded", done
            assert done["progress"]["step"] == TOTAL_STEPS
            events = client.get(
                f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}
            ).json()["data"]
        steps = {
            int(e["message"].split()[1].split("/")[0])
            for e in events
            if e["message"].startswith("Step ")
        }
        assert steps == set(range(1, TOTAL_STEPS + 1))  # no step report lost in the outage
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        if worker_thread is not None:
            worker_thread.join(timeout=60)
        _wipe(db_url)


@pytest.mark.parametrize("via", ["database", "http"])
def test_a_slow_starting_fine_tune_worker_is_not_taken_for_a_dead_one(
    via: str,
    sqlite_url: str,
    tmp_path: Path,
    tiny_base_dir: Path,  # noqa: F811
) -> None:
    """Two fine-tune workers and a lease (2 s) shorter than the time a fresh worker needs
    between claiming a job and its first training event (importing the training stack, loading
    the model: seconds here, minutes for a large model). The claiming worker keeps its lease
    alive meanwhile, so the other never takes the job over: it starts once and is never
    resumed. The lease is about dead workers, not slow ones. Workers on the database and remote
    workers over HTTP (which renew with empty event reports) both hold. (Lease renewal does not
    depend on the database, so SQLite alone is used.)"""
    settings = Settings(
        database_url=sqlite_url, data_dir=tmp_path, embedded_worker=False, worker_lease_seconds=2
    )
    migrate(settings)
    _wipe(sqlite_url)
    base_model = _register_base(settings, tiny_base_dir)
    env = {
        **os.environ,
        "DATABASE_URL": sqlite_url,
        "SELFINSTRUCT_DATA_DIR": str(tmp_path),
        "SELFINSTRUCT_EMBEDDED_WORKER": "false",
        "SELFINSTRUCT_WORKER_LEASE_SECONDS": "2",
        "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.2",
        "SELFINSTRUCT_WORKER_TOKEN": WORKER_TOKEN,
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "app.cli", "worker", "--kind", "finetune", "--device", "cpu"]
    workers: list[subprocess.Popen[bytes]] = []
    server: subprocess.Popen[bytes] | None = None
    with ExitStack() as stack:
        if via == "http":
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            server = serve_api(env, port, tmp_path / "server.log")
            wait_ready(base)
            client: Any = stack.enter_context(httpx.Client(base_url=base, timeout=30))
            command += ["--api-url", base, "--worker-token", WORKER_TOKEN]
        else:
            client = stack.enter_context(TestClient(create_app(settings)))
        try:
            _greet_dataset(client)
            workers = [
                subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                for _ in range(2)
            ]
            time.sleep(3)  # both are polling before the job exists
            job_id = _tiny_lora_job(client, base_model, max_steps=6, seed=5)
            deadline = time.monotonic() + 180
            while (job := client.get(f"/v1/fine_tuning/jobs/{job_id}").json())["status"] in (
                "validating_files",
                "queued",
                "running",
            ):
                assert time.monotonic() < deadline, job
                assert all(w.poll() is None for w in workers)
                time.sleep(0.2)
            assert job["status"] == "succeeded", job
            events = client.get(
                f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}
            ).json()["data"]
            starts = [
                e["message"]
                for e in events
                if e["message"].startswith(("Fine-tuning job started", "Resuming from"))
            ]
            assert starts == ["Fine-tuning job started"], starts
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
    _wipe(sqlite_url)
