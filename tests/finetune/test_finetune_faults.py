"""The fault matrix for fine-tune jobs (see tests/runs/test_fault_matrix.py): kill -9 of a
fine-tune worker when its claim is committed, while it records a training event, inside the
transaction that stores a checkpoint, and inside the one that ends the job. The next worker
finishes the job from its last checkpoint, each step is recorded once after the resume, the job
ends once, and the death is counted toward the attempt cap (fine-tunes commit no progress that
would forgive it: a job that kills its worker twice fails)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.db import migrate
from app.faults import ENV
from app.main import create_app
from app.settings import Settings
from tests.conftest import _wipe
from tests.finetune.test_finetune_e2e import (  # noqa: F401 (a fixture)
    LONG_SUPERVISED,
    _greet_dataset,
    _register_base,
    _tiny_lora_job,
    tiny_base_dir,
)
from tests.finetune.test_finetune_supervised import job_row

pytestmark = [pytest.mark.real, pytest.mark.both_databases, pytest.mark.postgres_slow]

LEASE_S = 2.0
TOTAL = 8


@pytest.mark.parametrize(
    "phase",
    [
        pytest.param("claimed", marks=pytest.mark.slow),
        pytest.param("running", marks=pytest.mark.slow),
        "committing",
        pytest.param("finishing", marks=pytest.mark.slow),
    ],
)
def test_a_fine_tune_survives_a_kill_at_each_phase(
    db_url: str,
    tmp_path: Path,
    tiny_base_dir: Path,  # noqa: F811 (the fixture imported above)
    phase: str,
) -> None:
    settings = Settings(database_url=db_url, data_dir=tmp_path, embedded_worker=False)
    migrate(settings)
    _wipe(db_url)
    base = _register_base(settings, tiny_base_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFINSTRUCT_")}
    env.update(
        DATABASE_URL=db_url,
        SELFINSTRUCT_DATA_DIR=str(tmp_path),
        SELFINSTRUCT_WORKER_LEASE_SECONDS=str(LEASE_S),
        SELFINSTRUCT_WORKER_POLL_SECONDS="0.1",
        OMP_NUM_THREADS="1",
    )
    command = [sys.executable, "-m", "app.cli", "worker", "--kind", "finetune", "--once"]

    def worker(fault: str | None) -> int:
        own = {**env, ENV: fault} if fault else env
        done = subprocess.run([*command, "--device", "cpu"], env=own, capture_output=True)
        assert done.returncode in (0, -9), done.stderr.decode()[-3000:]
        return done.returncode

    with TestClient(create_app(settings)) as client:
        _greet_dataset(client)
        job_id = _tiny_lora_job(
            client, base, max_steps=TOTAL, seed=3, checkpoint_interval=3, method=LONG_SUPERVISED
        )
        assert worker(f"finetune:{phase}") == -9, "the fault point was not reached"
        time.sleep(LEASE_S + 0.2)  # the dead worker's lease runs out
        assert worker(None) == 0
        done = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert done["status"] == "succeeded", done
        assert done["progress"]["step"] == TOTAL
        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000})
        messages = [e["message"] for e in reversed(events.json()["data"])]  # oldest first
        assert sum(m.startswith("The job has successfully completed") for m in messages) == 1
        starts = [i for i, m in enumerate(messages) if m.startswith(("Resuming", "Fine-tuning"))]
        last_start = starts[-1]
        steps = [int(m.split()[1].split("/")[0]) for m in messages[last_start:] if m[:5] == "Step "]
        # each remaining step once (none when the last checkpoint was the last step)
        assert steps == list(range(TOTAL - len(steps) + 1, TOTAL + 1)), steps
        checkpoints = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
        numbers = [c["step_number"] for c in checkpoints]
        assert len(numbers) == len(set(numbers)), numbers
    assert job_row(db_url, job_id).lost_count == 1
    _wipe(db_url)
