"""A user fine-tunes over the OpenAI-shaped API: files, jobs, events, checkpoints, cancel."""

from __future__ import annotations

import hashlib
import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.db import make_engine
from app.models import FineTuningJobRow, JobStatus
from app.settings import Settings


def chat_jsonl(n: int = 4) -> bytes:
    words = ["hello", "goodbye", "thanks", "sorry", "welcome", "cheers", "bravo", "ahoy"]
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Say {w}."},
                    {"role": "assistant", "content": f"{w.title()}!"},
                ]
            }
        )
        + "\n"
        for w in words[:n]
    ).encode()


def upload(client: TestClient, content: bytes, name: str = "train.jsonl") -> dict:  # type: ignore[type-arg]
    response = client.post(
        "/v1/files", files={"file": (name, content)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_upload_and_download_a_file(client: TestClient) -> None:
    content = chat_jsonl()
    meta = upload(client, content)
    assert meta["object"] == "file" and meta["bytes"] == len(content)
    assert meta["sha256"] == hashlib.sha256(content).hexdigest()
    assert client.get(f"/v1/files/{meta['id']}").json() == meta
    assert client.get(f"/v1/files/{meta['id']}/content").content == content
    for bad in ("file-nope", "..%2F..%2Fetc%2Fpasswd", "file-" + "0" * 24):
        assert client.get(f"/v1/files/{bad}/content").status_code == 404
    assert (
        client.post(
            "/v1/files", files={"file": ("x.jsonl", b"")}, data={"purpose": "fine-tune"}
        ).status_code
        == 422
    )
    assert (
        client.post(
            "/v1/files", files={"file": ("x.jsonl", b"{}")}, data={"purpose": "assistants"}
        ).status_code
        == 422
    )


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (
            b'{"messages": [{"role": "user", "content": "hi"}, '
            b'{"role": "assistant", "content": "yo"}]}\nnot json at all\n',
            2,
            "not valid JSON",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\n', 1, "no assistant message"),
    ],
)
def test_bad_training_file_fails_the_job_naming_the_line(
    client: TestClient, content: bytes, line: int, reason: str
) -> None:
    file_id = upload(client, content)["id"]
    job = client.post(
        "/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "training_file": file_id}
    ).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_training_file"
    assert job["error"]["param"] == "training_file"
    # The bad line and what is wrong with it, together: "line 2: not valid JSON (...)".
    assert f"line {line}: {reason}" in job["error"]["message"], job["error"]


def test_refusals(client: TestClient) -> None:
    file_id = upload(client, chat_jsonl())["id"]
    unknown = client.post("/v1/fine_tuning/jobs", json={"model": "gpt-9", "training_file": file_id})
    assert unknown.status_code == 404 and "gpt-9" in unknown.json()["detail"]
    missing = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "SmolLM2-135M-Instruct", "training_file": "file-nope"},
    )
    assert missing.status_code == 404
    for hyper in ({"n_epochs": 0}, {"learning_rate_multiplier": -1}, {"batch_size": 10_000}):
        bad = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "SmolLM2-135M-Instruct",
                "training_file": file_id,
                "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
            },
        )
        assert bad.status_code == 422, hyper
        assert next(iter(hyper)) in bad.json()["detail"]
    both = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "SmolLM2-135M-Instruct", "training_file": file_id, "dataset": "default"},
    )
    assert both.status_code == 422 and "exactly one" in both.json()["detail"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


@pytest.mark.both_databases
def test_dataset_job_freezes_the_data_and_cancel_is_final(client: TestClient) -> None:
    job = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "SmolLM2-135M-Instruct",
            "dataset": "default",
            "suffix": "starter",
            "lora": {"r": 8},
        },
    ).json()
    assert job["status"] == "queued", job
    frozen = client.get(f"/v1/files/{job['training_file']}/content").content
    assert job["training_data"]["sha256"] == hashlib.sha256(frozen).hexdigest()
    seeds = client.get("/v1/datasets/default").json()["seeds"]
    assert job["training_data"]["examples"] >= seeds
    assert json.loads(frozen.splitlines()[0])["messages"][1]["role"] == "assistant"
    assert job["method"]["lora"]["r"] == 8
    assert job["hyperparameters"] == {
        "n_epochs": 3,
        "batch_size": 8,
        "learning_rate_multiplier": 1.0,
    }
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    messages = [
        e["message"] for e in client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    ]
    assert messages[0] == "Job cancelled"
    assert client.get("/v1/fine_tuning/jobs/ftjob-nope").status_code == 404


@pytest.mark.both_databases
def test_succeeded_job_never_changes(client: TestClient, settings: Settings) -> None:
    job = client.post(
        "/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": "default"}
    ).json()
    engine = make_engine(settings)
    with Session(engine) as session:
        row = session.get(FineTuningJobRow, job["id"])
        assert row is not None
        row.status, row.fine_tuned_model = JobStatus.succeeded, "ft:x"
        session.add(row)
        session.commit()
    engine.dispose()
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "succeeded"


@pytest.mark.both_databases
def test_list_pages_newest_first(client: TestClient) -> None:
    ids = [
        client.post(
            "/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": "default"}
        ).json()["id"]
        for _ in range(3)
    ]
    first = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [j["id"] for j in first["data"]] == ids[::-1][:2]
    rest = client.get(
        "/v1/fine_tuning/jobs", params={"limit": 2, "after": first["data"][-1]["id"]}
    ).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False


def test_openai_sdk_works_against_the_service(client: TestClient) -> None:
    from openai import OpenAI

    sdk = OpenAI(base_url=f"{client.base_url}/v1", api_key="unused", http_client=client)
    assert "SmolLM2-135M-Instruct" in [m.id for m in sdk.models.list()]
    uploaded = sdk.files.create(file=("train.jsonl", chat_jsonl()), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct",
        training_file=uploaded.id,
        suffix="sdk",
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}},
        },
    )
    assert job.status == "queued" and job.hyperparameters.n_epochs == 2
    assert sdk.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=5)] == [job.id]
    events = sdk.fine_tuning.jobs.list_events(job.id)
    assert any("validated" in e.message for e in events)
    assert list(sdk.fine_tuning.jobs.checkpoints.list(job.id)) == []
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"


def test_event_stream_replays_and_ends_with_the_job(client: TestClient) -> None:
    job = client.post(
        "/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": "default"}
    ).json()
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    with client.stream(
        "GET", f"/v1/fine_tuning/jobs/{job['id']}/events", params={"stream": True}
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        data = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    assert data[0]["message"] == "Validating training file"
    assert data[-1]["message"] == "Job cancelled"
    assert all(e["object"] == "fine_tuning.job.event" for e in data)


def test_a_file_over_the_example_limit_fails_validation(settings_factory) -> None:  # type: ignore[no-untyped-def]
    from app.main import create_app

    with TestClient(create_app(settings_factory(max_training_examples=3))) as client:
        file_id = upload(client, chat_jsonl(4))["id"]
        job = client.post(
            "/v1/fine_tuning/jobs",
            json={"model": "SmolLM2-135M-Instruct", "training_file": file_id},
        ).json()
        assert job["status"] == "failed"
        assert job["error"]["code"] == "invalid_training_file"
        assert "SELFINSTRUCT_MAX_TRAINING_EXAMPLES" in job["error"]["message"]


def test_long_examples_policy_is_kept_for_the_worker(
    client: TestClient, settings: Settings
) -> None:
    from app.finetune.worker import job_spec

    file_id = upload(client, chat_jsonl())["id"]
    body = {"model": "SmolLM2-135M-Instruct", "training_file": file_id}
    bad = client.post("/v1/fine_tuning/jobs", json=body | {"long_examples": "shorten"})
    assert bad.status_code == 422 and "long_examples" in bad.json()["detail"]
    default = client.post("/v1/fine_tuning/jobs", json=body).json()
    dropping = client.post("/v1/fine_tuning/jobs", json=body | {"long_examples": "drop"}).json()
    assert default["method"]["long_examples"] == "truncate"
    assert dropping["method"]["long_examples"] == "drop"
    engine = make_engine(settings)
    with Session(engine) as session:
        row = session.get(FineTuningJobRow, dropping["id"])
        assert row is not None
        assert job_spec(settings, engine, row).config.long_examples == "drop"
    engine.dispose()


def test_truncated_and_dropped_counts_reach_the_job_and_its_events(
    client: TestClient, settings: Settings
) -> None:
    from app.finetune.protocol import StartEvent
    from app.finetune.worker import record_event

    file_id = upload(client, chat_jsonl())["id"]
    job = client.post(
        "/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "training_file": file_id}
    ).json()
    engine = make_engine(settings)
    with Session(engine) as session:  # as a worker's claim leaves it
        row = session.get(FineTuningJobRow, job["id"])
        assert row is not None
        row.status, row.worker_id = JobStatus.running, "w-1"
        session.add(row)
        session.commit()
    start = StartEvent(type="start", train_tokens=90, truncated_examples=2, dropped_examples=1)
    assert record_event(engine, job["id"], "w-1", start)
    engine.dispose()
    data = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["training_data"]
    assert (data["truncated_examples"], data["dropped_examples"], data["tokens"]) == (2, 1, 90)
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    [notice] = [e for e in events if "truncated" in e["message"]]
    assert notice["message"].startswith("2 training examples longer than max_seq_len")
    assert notice["data"] == {"truncated_examples": 2, "dropped_examples": 1}


def test_a_remote_worker_is_not_given_a_job_on_several_nodes(
    client: TestClient, settings: Settings
) -> None:
    """Its nodes meet through the database, which a worker over HTTP does not reach."""
    from app.finetune.relay import claim_job

    file_id = upload(client, chat_jsonl(4))["id"]
    job = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "SmolLM2-135M-Instruct", "training_file": file_id, "nodes": 2},
    ).json()
    assert (job["status"], job["nodes"]) == ("queued", 2)
    engine = make_engine(settings)
    assert claim_job(engine=engine, settings=settings, worker_id="remote-gpu") is None
    single = client.post(
        "/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "training_file": file_id}
    ).json()
    spec = claim_job(engine=engine, settings=settings, worker_id="remote-gpu")
    assert spec is not None and spec.job_id == single["id"] and spec.config.nodes == 1
