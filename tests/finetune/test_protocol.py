"""The worker protocol: one job spec and one event model per kind, shared by the database worker
and the HTTP worker, shown in the OpenAPI schema; the remote worker loads without the database."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlmodel import Session

from app.db import make_engine
from app.finetune.protocol import parse_event
from app.finetune.worker import begin_attempt, record_event
from app.main import create_app
from app.models import FineTuningJobRow, JobStatus
from app.settings import Settings
from tests.conftest import _wipe
from tests.finetune.test_finetune_api import chat_jsonl, upload

ROOT = Path(__file__).resolve().parents[2]
WORKER = {"authorization": "Bearer protocol-worker-token-1"}
DATABASE_MODULES = ("sqlalchemy", "sqlmodel", "alembic", "psycopg", "app.models", "app.db")
KINDS = {"start", "step", "eval", "checkpoint", "cancelled", "done"}

# What training emits over a short job, one event of each kind that a finished job sees.
TRAINING_EVENTS: list[dict[str, Any]] = [
    {
        "type": "start",
        "start_step": 0,
        "total_steps": 2,
        "n_train_examples": 4,
        "train_tokens": 120,
        "truncated_examples": 1,
        "dropped_examples": 0,
        "device": "cpu",
        "compiled": False,
        "memory_available_bytes": None,
    },
    {"type": "eval", "step": 0, "eval_loss": 3.25},
    {
        "type": "step",
        "step": 1,
        "total_steps": 2,
        "epoch": 0,
        "train_loss": 2.5,
        "tokens_per_s": 400.0,
        "elapsed_s": 0.5,
    },
    {"type": "checkpoint", "step": 1, "path": "/tmp/ckpt/step-1"},
    {"type": "done", "step": 2, "final_dir": "/tmp/final", "train_loss": 2.0, "eval_loss": None},
]


def _loaded_modules(module: str) -> list[str]:
    """The database modules that importing `module` in a fresh interpreter loads."""
    code = (
        f"import sys, {module}; "
        f"print('\\n'.join(m for m in sys.modules if m.startswith({DATABASE_MODULES!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return result.stdout.split()


def test_the_remote_worker_imports_nothing_that_needs_the_database() -> None:
    assert _loaded_modules("app.finetune.remote") == []
    # the same check sees the database worker's imports, so it would see the remote one's
    assert "sqlalchemy" in _loaded_modules("app.finetune.worker")


@pytest.fixture
def remote_client(settings_factory: Callable[..., Settings]) -> Iterator[TestClient]:
    settings = settings_factory(worker_token=WORKER["authorization"].removeprefix("Bearer "))
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


def test_the_openapi_schema_shows_the_job_spec_and_every_event_kind(
    remote_client: TestClient,
) -> None:
    document = remote_client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    paths = document["paths"]
    claimed = paths["/v1/workers/finetune/claim"]["post"]["responses"]["200"]
    assert claimed["content"]["application/json"]["schema"]["$ref"].endswith("/JobSpec")
    assert {"job_id", "training_file", "config", "lease_seconds"} <= set(
        schemas["JobSpec"]["required"]
    )
    events = schemas["EventsRequest"]["properties"]["events"]["items"]
    assert set(events["discriminator"]["mapping"]) == KINDS
    assert set(schemas["StepEvent"]["required"]) == {"type", "step", "total_steps", "train_loss"}
    outcome = schemas["CompleteRequest"]["properties"]["outcome"]
    assert set(outcome["discriminator"]["mapping"]) == {"succeeded", "failed"}
    assert "error" in schemas["Failed"]["required"]


def test_both_workers_record_the_same_events_the_same_way(
    remote_client: TestClient, settings: Settings
) -> None:
    """The same training events, sent over HTTP by a remote worker and recorded directly by the
    database worker, leave the same progress, training data, events and checkpoints; an event
    of no known kind is refused by both, and records nothing."""
    file_id = upload(remote_client, chat_jsonl())["id"]
    body = {"model": "SmolLM2-135M-Instruct", "training_file": file_id}
    remote_job = remote_client.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    claimed = remote_client.post(
        "/v1/workers/finetune/claim", json={"worker_id": "w-remote"}, headers=WORKER
    )
    assert claimed.status_code == 200 and claimed.json()["job_id"] == remote_job
    assert claimed.json()["config"]["long_examples"] == "truncate"
    local_job = remote_client.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    engine = make_engine(settings)
    with Session(engine) as session:  # as the database worker's claim leaves it
        row = session.get(FineTuningJobRow, local_job)
        assert row is not None
        row.status, row.worker_id = JobStatus.running, "w-db"
        session.add(row)
        session.commit()
    assert begin_attempt(engine, local_job)

    sent = remote_client.post(
        f"/v1/workers/finetune/{remote_job}/events",
        json={"worker_id": "w-remote", "events": TRAINING_EVENTS},
        headers=WORKER,
    )
    assert sent.status_code == 200 and sent.json() == {"proceed": True}
    for event in TRAINING_EVENTS:
        assert record_event(engine, local_job, "w-db", parse_event(event))

    unknown = {"type": "warmup", "step": 1}
    refused = remote_client.post(
        f"/v1/workers/finetune/{remote_job}/events",
        json={"worker_id": "w-remote", "events": [unknown]},
        headers=WORKER,
    )
    assert refused.status_code == 422 and "events" in refused.json()["detail"]
    with pytest.raises(ValidationError):
        parse_event(unknown)
    engine.dispose()

    def seen(job_id: str) -> tuple[Any, ...]:
        job = remote_client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        events = remote_client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100").json()
        checkpoints = remote_client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()
        return (
            job["progress"],
            job["training_data"],
            [(e["message"], e["data"], e["type"]) for e in events["data"]],
            [(c["step_number"], c["metrics"]) for c in checkpoints["data"]],
        )

    remote, local = seen(remote_job), seen(local_job)
    assert remote == local
    progress, data, events, checkpoints = remote
    assert progress["step"] == 1 and progress["valid_loss"] == 3.25
    assert data["tokens"] == 120 and data["truncated_examples"] == 1
    assert checkpoints == [(1, {"step": 1, "train_loss": 2.5, "valid_loss": 3.25})]
    step = next(e for e in events if e[0].startswith("Step 1/2"))
    assert step[1] == TRAINING_EVENTS[2] and step[2] == "metrics"
    assert not any("warmup" in message for message, _, _ in events)
