"""A fine-tune job on two nodes, on loopback with gloo on the CPU: two fine-tune workers (the
one that claims the job hosts the rendezvous, the other joins it as the job's second node) make
the losses and the model that one process makes from the same batches; a node that never joins
fails the job after the rendezvous timeout, saying which node and what to do; a node killed mid-job
costs one attempt and the job resumes on two nodes (slow)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from sqlmodel import Session, col, select

from app.db import make_engine, migrate
from app.finetune.nodes import claim_node
from app.finetune.spec import job_spec
from app.main import create_app
from app.models import FineTuningJobRow, JobPart
from app.services.files import file_path
from app.settings import Settings
from app.worker import Worker
from tests.conftest import _wipe
from tests.finetune.test_finetune_e2e import (  # noqa: F401 (a fixture)
    _register_base,
    tiny_base_dir,
)

# Starts real processes (torchrun and its trainers): not in make test-fast.
pytestmark = pytest.mark.real

HANG_GUARD_S = 300.0  # only a hung test waits this long


def chat_jsonl(n: int = 8) -> bytes:
    words = ["hello", "goodbye", "thanks", "sorry", "welcome", "cheers", "bravo", "ahoy"]
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Say {w}, please."},
                    {"role": "assistant", "content": f"{w.title()}! " * (i + 1)},
                ]
            }
        )
        + "\n"
        for i, w in enumerate(words[:n])
    ).encode()


@pytest.fixture
def service(
    sqlite_url: str,
    tmp_path: Path,
    tiny_base_dir: Path,  # noqa: F811 (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Settings, TestClient, str, str]]:
    """The API (no worker of its own), the tiny base model registered and a training file."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # four trainers share two cores
    settings = Settings(
        database_url=sqlite_url,
        data_dir=tmp_path,
        embedded_worker=False,
        finetune_workers=0,
        worker_lease_seconds=10,
        worker_poll_seconds=0.1,
        rendezvous_timeout_s=60,
        node_address="127.0.0.1",
    )
    migrate(settings)
    _wipe(settings.db_url)
    base = _register_base(settings, tiny_base_dir)
    with TestClient(create_app(settings)) as client:
        uploaded = client.post(
            "/v1/files", files={"file": ("t.jsonl", chat_jsonl())}, data={"purpose": "fine-tune"}
        )
        yield settings, client, base, uploaded.json()["id"]
    _wipe(settings.db_url)


def create(client: TestClient, base: str, training_file: str, **fields: Any) -> dict[str, Any]:
    body = {
        "model": base,
        "training_file": training_file,
        "max_seq_len": 64,
        "seed": 3,
        "checkpoint_interval": 2,
        "method": {  # 8 examples, 4 a step: 4 steps, two rows per node and step
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5}
            },
        },
    }
    response = client.post("/v1/fine_tuning/jobs", json=body | fields)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["status"] == "queued", job
    return job


def worker(settings: Settings, **overrides: Any) -> Worker:
    own = settings.model_copy(update=overrides)
    return Worker(engine=make_engine(own), settings=own, kind="finetune", device="cpu")


def wait_for(what: str, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def parts(settings: Settings, job_id: str) -> list[JobPart]:
    with Session(make_engine(settings)) as session:
        return list(
            session.exec(
                select(JobPart).where(JobPart.job_id == job_id).order_by(col(JobPart.part))
            )
        )


def losses(client: TestClient, job_id: str) -> list[float]:
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 200}).json()
    return [e["data"]["train_loss"] for e in reversed(events["data"]) if e["type"] == "metrics"]


def one_process(settings: Settings, job_id: str, output_dir: Path) -> tuple[list[float], Path]:
    """The job's training in this process, on one device: the reference two nodes must meet."""
    from training.config import FinetuneConfig
    from training.train import train

    engine = make_engine(settings)
    with Session(engine) as session:
        row = session.get(FineTuningJobRow, job_id)
        assert row is not None
        spec = job_spec(settings, engine, row)
    config = FinetuneConfig(
        base_model=str(spec.base_model),
        output_dir=str(output_dir),
        device="cpu",
        **(spec.config.training_kwargs() | {"nodes": 1}),
    )
    events: list[dict[str, Any]] = []
    torch.set_num_threads(1)
    result = train(config, file_path(settings, spec.training_file), on_event=events.append)
    assert result.final_dir is not None
    return [e["train_loss"] for e in events if e["type"] == "step"], result.final_dir


def test_two_nodes_train_as_one_process_does(
    service: tuple[Settings, TestClient, str, str], tmp_path: Path
) -> None:
    settings, client, base, training_file = service
    job = create(client, base, training_file, nodes=2)
    assert job["nodes"] == 2
    # The host advertises "localhost", the joining node "127.0.0.1": torchrun numbers nodes by
    # address, so the joining node comes first there and the host's processes must be moved
    # to the first ranks for its worker to hear the events.
    host = worker(settings, node_address="localhost")
    hosting = threading.Thread(target=lambda: asyncio.run(host.run_forever(once=True)))
    hosting.start()
    [published] = wait_for("the rendezvous", lambda: parts(settings, job["id"]))
    assert published.state["endpoint"].startswith("localhost:")
    joining = worker(settings)
    joiner = threading.Thread(target=lambda: asyncio.run(joining.run_forever()))
    joiner.start()
    try:
        expected_losses, expected_dir = one_process(settings, job["id"], tmp_path / "one")
        wait_for("the second node's end", lambda: parts(settings, job["id"])[0].finished_at)
        hosting.join(HANG_GUARD_S)
    finally:
        joining.stop()
        joiner.join(HANG_GUARD_S)

    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done
    assert done["progress"]["step"] == 4
    assert losses(client, job["id"]) == pytest.approx(expected_losses, rel=1e-5)
    [node] = parts(settings, job["id"])
    assert (node.status, node.worker_id) == ("succeeded", joining.worker_id)
    ours = load_file(settings.data_dir / "artifacts" / job["id"] / "final" / "model.safetensors")
    theirs = load_file(expected_dir / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-4, atol=1e-5)


def test_a_node_that_never_joins_fails_the_job_after_the_timeout(
    service: tuple[Settings, TestClient, str, str],
) -> None:
    settings, client, base, training_file = service
    job = create(client, base, training_file, nodes=2)
    asyncio.run(worker(settings, rendezvous_timeout_s=2).run_forever(once=True))

    failed = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert failed["status"] == "failed", failed
    error = failed["error"]
    assert error["code"] == "rendezvous_timeout"
    assert "did not gather its 2 nodes within 2 s" in error["message"]
    assert "node 1 was not taken by any fine-tune worker" in error["message"]
    assert "selfinstruct worker --kind finetune" in error["message"]
    # nothing is left for a late worker to join
    assert [p.status for p in parts(settings, job["id"])] == ["failed"]
    assert claim_node(make_engine(settings), settings, "a-late-worker") is None
    assert not (settings.data_dir / "artifacts" / job["id"] / "final").exists()


@pytest.mark.slow
def test_a_node_killed_mid_job_costs_an_attempt_and_the_job_resumes_on_two_nodes(
    service: tuple[Settings, TestClient, str, str],
) -> None:
    """kill -9 of the joining node's worker: the host sees its peer gone, hands the job back
    (one attempt), claims it again and resumes from the checkpoint once another worker joins."""
    import os
    import subprocess
    import sys

    settings, client, base, training_file = service
    total = 40
    job = create(
        client,
        base,
        training_file,
        nodes=2,
        max_steps=total,
        checkpoint_interval=5,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50}}},
    )
    env = {
        **os.environ,
        "DATABASE_URL": settings.db_url,
        "SELFINSTRUCT_DATA_DIR": str(settings.data_dir),
        "SELFINSTRUCT_WORKER_LEASE_SECONDS": "5",
        "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.2",
        "SELFINSTRUCT_NODE_ADDRESS": "127.0.0.1",
    }
    command = [sys.executable, "-m", "app.cli", "worker", "--kind", "finetune", "--device", "cpu"]
    workers: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        workers.append(
            subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        )
        return workers[-1]

    def status() -> dict[str, Any]:
        return dict(client.get(f"/v1/fine_tuning/jobs/{job['id']}").json())

    try:
        start()
        wait_for("the rendezvous", lambda: parts(settings, job["id"]))
        joining = start()
        wait_for(
            "a checkpoint",
            lambda: client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"],
        )
        joining.kill()
        joining.wait()
        start()  # the node for the next attempt
        done = wait_for("the job's end", lambda: (s := status())["finished_at"] and s)
    finally:
        for process in workers:
            process.kill()
            process.wait()
    assert done["status"] == "succeeded", done
    assert done["progress"]["step"] == total
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 500})
    messages = [e["message"] for e in reversed(events.json()["data"])]
    assert len([m for m in messages if m.startswith("A node of this job was lost")]) == 1
    assert any(m.startswith("Resuming from step-") for m in messages)
    assert len([m for m in messages if m.startswith("Waiting for 1 more node")]) == 2
