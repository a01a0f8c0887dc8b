"""A user tidies up the OpenAI-shaped resources: lists and deletes files, deletes a fine-tuned
model, and finds /metrics behind the token when reads are private."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.db import make_engine
from app.finetune.worker import fine_tuned_model_id
from app.main import create_app
from app.models import FineTuningJobRow, JobStatus, utcnow
from app.settings import BUNDLED_MODEL_ID, Settings
from tests.conftest import _wipe
from tests.finetune.test_finetune_api import chat_jsonl, upload

TOKEN = "files-models-token-8c41e2"


@pytest.fixture
def idle_client(settings_factory: Callable[..., Settings]) -> Iterator[TestClient]:
    """The app without its generation worker: queued runs and evaluations stay queued."""
    settings = settings_factory(embedded_worker=False)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


def make_tuned_model(http: TestClient | httpx.Client, settings: Settings, suffix: str) -> str:
    """A succeeded job's model without training: the job is created through the API, then
    marked succeeded as the worker would, with a model folder under its artifacts."""
    job = http.post(
        "/v1/fine_tuning/jobs",
        json={"model": BUNDLED_MODEL_ID, "dataset": "default", "suffix": suffix},
    ).json()
    engine = make_engine(settings)
    with Session(engine) as session:
        row = session.get(FineTuningJobRow, job["id"])
        assert row is not None and row.status == JobStatus.queued
        row.status, row.finished_at = JobStatus.succeeded, utcnow()
        row.fine_tuned_model = fine_tuned_model_id(row)
        model_id = row.fine_tuned_model
        session.add(row)
        session.commit()
    engine.dispose()
    final = settings.data_dir / "artifacts" / job["id"] / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (final / "model.safetensors").write_bytes(b"weights")
    return model_id


def model_ids(client: TestClient) -> list[str]:
    return [m["id"] for m in client.get("/v1/models").json()["data"]]


# --- files -----------------------------------------------------------------------------------


@pytest.mark.both_databases
def test_files_list_newest_first_in_pages_with_purpose_and_order(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(page_size_max=50)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        # The file table outlives other tests' wipes: assert on this test's files by position.
        mine = [upload(client, chat_jsonl(n))["id"] for n in (1, 2, 3)]
        first = client.get("/v1/files", params={"limit": 2}).json()
        assert first["object"] == "list" and first["has_more"] is True
        assert [f["id"] for f in first["data"]] == mine[::-1][:2]
        assert all(f["object"] == "file" for f in first["data"])
        rest = client.get("/v1/files", params={"limit": 2, "after": mine[1]}).json()
        assert rest["data"][0]["id"] == mine[0]

        ascending = client.get("/v1/files", params={"order": "asc", "limit": 50}).json()["data"]
        assert [f["id"] for f in ascending][-3:] == mine
        after_oldest = client.get(
            "/v1/files", params={"order": "asc", "after": mine[0], "limit": 50}
        ).json()
        assert [f["id"] for f in after_oldest["data"]] == mine[1:]
        assert after_oldest["has_more"] is False

        fine_tune = client.get("/v1/files", params={"purpose": "fine-tune", "limit": 3}).json()
        assert [f["id"] for f in fine_tune["data"]] == mine[::-1]
        other = client.get("/v1/files", params={"purpose": "assistants"}).json()
        assert other == {"object": "list", "data": [], "has_more": False}

        too_many = client.get("/v1/files", params={"limit": 51})
        assert too_many.status_code == 422
        assert "limit must be at most 50 (SELFINSTRUCT_PAGE_SIZE_MAX)" in too_many.json()["detail"]
        unknown = client.get("/v1/files", params={"after": "file-" + "0" * 24})
        assert unknown.status_code == 404 and "after" in unknown.json()["detail"]
        assert client.get("/v1/files", params={"after": "nope"}).status_code == 422
        assert client.get("/v1/files", params={"order": "sideways"}).status_code == 422
    _wipe(settings.db_url)


def test_upload_refusals_are_stated_in_the_schema(client: TestClient) -> None:
    """The two rules the upload enforces (a purpose of fine-tune, a non-empty file) are in the
    OpenAPI document, so a schema-valid upload is never refused as invalid."""
    spec = client.get("/openapi.json").json()
    body = spec["components"]["schemas"]["Body_upload_file_v1_files_post"]["properties"]
    assert body["purpose"]["const"] == "fine-tune" and body["file"]["minLength"] == 1
    empty = client.post("/v1/files", files={"file": ("x.jsonl", b"")})
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    other = client.post(
        "/v1/files", files={"file": ("x.jsonl", b"{}\n")}, data={"purpose": "batch"}
    )
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "purpose"


def test_deleting_a_file_removes_it_and_its_bytes_unless_a_job_still_reads_it(
    client: TestClient, settings: Settings
) -> None:
    train, valid = upload(client, chat_jsonl(4)), upload(client, chat_jsonl(2))
    job = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": BUNDLED_MODEL_ID,
            "training_file": train["id"],
            "validation_file": valid["id"],
        },
    ).json()
    assert job["status"] == "queued"
    for meta, role in ((train, "training_file"), (valid, "validation_file")):
        refused = client.delete(f"/v1/files/{meta['id']}")
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert job["id"] in detail and role in detail and "cancel" in detail
        assert client.get(f"/v1/files/{meta['id']}").status_code == 200  # nothing was removed

    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    stored = settings.data_dir / "files" / f"{train['id']}.jsonl"
    assert stored.exists()
    deleted = client.delete(f"/v1/files/{train['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": train["id"], "object": "file", "deleted": True}
    assert not stored.exists()
    assert client.get(f"/v1/files/{train['id']}").status_code == 404
    assert client.get(f"/v1/files/{train['id']}/content").status_code == 404
    listed = client.get("/v1/files", params={"limit": 1000}).json()["data"]
    assert train["id"] not in [f["id"] for f in listed] and valid["id"] in [f["id"] for f in listed]
    # The finished job keeps naming its file, as OpenAI's jobs do.
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["training_file"] == train["id"]
    again = client.delete(f"/v1/files/{train['id']}")
    assert again.status_code == 404 and train["id"] in again.json()["detail"]
    assert client.delete("/v1/files/..%2F..%2Fetc%2Fpasswd").status_code == 404


# --- models ----------------------------------------------------------------------------------


def test_deleting_a_tuned_model_takes_it_out_of_models_chat_and_fine_tuning(
    client: TestClient, settings: Settings
) -> None:
    model_id = make_tuned_model(client, settings, "tidy")
    job_id = model_id.rsplit(":", 1)[1]
    artifacts = settings.data_dir / "artifacts" / job_id
    assert model_id in model_ids(client)

    deleted = client.delete(f"/v1/models/{model_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": model_id, "object": "model", "deleted": True}
    assert model_id not in model_ids(client)
    assert not artifacts.exists()
    chat = client.post(
        "/v1/chat/completions",
        json={"model": model_id, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 404 and model_id in chat.json()["detail"]
    retune = client.post("/v1/fine_tuning/jobs", json={"model": model_id, "dataset": "default"})
    assert retune.status_code == 404
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["fine_tuned_model"] is None
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    assert events[0]["message"] == f"Model {model_id} deleted; its artifacts were removed"
    assert client.delete(f"/v1/models/{model_id}").status_code == 404


def test_models_not_tuned_here_are_refused_with_403_and_unknown_ones_with_404(
    settings_factory: Callable[..., Settings],
) -> None:
    endpoint = {"name": "lab", "base_url": "http://127.0.0.1:9/v1", "models": ["org/model-x"]}
    settings = settings_factory(endpoints=[endpoint])
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        for model in (BUNDLED_MODEL_ID, "org/model-x"):
            refused = client.delete(f"/v1/models/{model}")
            assert refused.status_code == 403, (model, refused.text)
            assert refused.json()["code"] == "forbidden"
            assert f"Model '{model}' was not fine-tuned here" in refused.json()["detail"]
        unknown = client.delete("/v1/models/ft:nothing:here:ftjob-0")
        assert unknown.status_code == 404 and "does not exist" in unknown.json()["detail"]
        assert client.get("/v1/models").status_code == 200
    _wipe(settings.db_url)


def test_a_tuned_model_in_use_is_refused_with_409_naming_the_user(
    idle_client: TestClient, settings_factory: Callable[..., Settings]
) -> None:
    client = idle_client
    settings = settings_factory(embedded_worker=False)
    model_id = make_tuned_model(client, settings, "busy")
    run_body = {"target": 5, "model": model_id}
    judged_body = {"target": 5, "judge": {"model": model_id}}
    users = [
        ("run", "/v1/datasets/default/runs", run_body, "/v1/runs/{id}/cancel"),
        ("run", "/v1/datasets/default/runs", judged_body, "/v1/runs/{id}/cancel"),
        (
            "judgement job",
            "/v1/datasets/default/judgements",
            {"model": model_id},
            "/v1/judgements/{id}/cancel",
        ),
        (
            "evaluation",
            "/v1/evaluations",
            {"models": [model_id], "dataset": "default", "split": "all", "limit": 2},
            "/v1/evaluations/{id}/cancel",
        ),
        (
            "fine-tuning job",
            "/v1/fine_tuning/jobs",
            {"model": model_id, "dataset": "default"},
            "/v1/fine_tuning/jobs/{id}/cancel",
        ),
    ]
    for what, create, body, cancel in users:
        created = client.post(create, json=body)
        assert created.status_code in (200, 201, 202), (create, created.text)
        user_id = created.json()["id"]
        refused = client.delete(f"/v1/models/{model_id}")
        assert refused.status_code == 409, (what, refused.text)
        assert f"in use by {what} {user_id}" in refused.json()["detail"]
        assert cancel.format(id=user_id) in refused.json()["detail"]
        assert model_id in model_ids(client)  # still there
        assert client.post(cancel.format(id=user_id)).status_code == 200
    assert client.delete(f"/v1/models/{model_id}").status_code == 200
    assert model_id not in model_ids(client)


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_need_the_token_exactly_when_reads_are_private(
    settings_factory: Callable[..., Settings],
) -> None:
    bearer = {"authorization": f"Bearer {TOKEN}"}
    public = settings_factory(api_token=TOKEN)
    with TestClient(create_app(public)) as client:
        assert client.get("/metrics").status_code == 200
    private = settings_factory(api_token=TOKEN, private_reads=True)
    with TestClient(create_app(private)) as client:
        for headers in ({}, {"authorization": "Bearer wrong-token-000000"}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["code"] == "unauthorized"
            assert "selfinstruct_http_requests" not in refused.text
        allowed = client.get("/metrics", headers=bearer)
        assert allowed.status_code == 200 and "selfinstruct_http_requests" in allowed.text
        client.cookies.set("selfinstruct_token", TOKEN)  # the dashboard's read cookie
        assert client.get("/metrics").status_code == 200
        assert client.get("/healthz").status_code == 200  # probes stay open
