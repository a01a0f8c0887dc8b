"""A user manages datasets over HTTP."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


def test_fresh_service_has_default_dataset_with_starter_seeds(client: TestClient) -> None:
    body = client.get("/v1/datasets").json()
    assert body["count"] == 1
    default = body["data"][0]
    assert default["name"] == "default"
    assert default["seeds"] >= 40
    tasks = client.get("/v1/datasets/default/tasks", params={"limit": 1000}).json()["data"]
    chinese = [t for t in tasks if any("\u4e00" <= ch <= "\u9fff" for ch in t["instruction"])]
    classification = [t for t in tasks if t["is_classification"]]
    assert len(chinese) >= 10
    assert 0.15 <= len(classification) / len(tasks) <= 0.35


def test_create_read_list_and_delete_dataset(client: TestClient) -> None:
    created = client.post("/v1/datasets", json={"name": "medical-zh", "language": "zh"})
    assert created.status_code == 201
    assert created.json()["language"] == "zh"
    assert created.json()["seeds"] == 0
    assert client.get("/v1/datasets/medical-zh").json()["name"] == "medical-zh"
    names = [d["name"] for d in client.get("/v1/datasets").json()["data"]]
    assert names == ["default", "medical-zh"]
    assert client.delete("/v1/datasets/medical-zh").status_code == 204
    gone = client.get("/v1/datasets/medical-zh")
    assert gone.status_code == 404
    assert "medical-zh" in gone.json()["detail"]


@pytest.mark.both_databases
def test_duplicate_dataset_name_is_409_and_changes_nothing(client: TestClient) -> None:
    assert (
        client.post("/v1/datasets", json={"name": "a", "description": "first"}).status_code == 201
    )
    again = client.post("/v1/datasets", json={"name": "a", "description": "second"})
    assert again.status_code == 409
    assert again.json()["code"] == "conflict"
    assert client.get("/v1/datasets/a").json()["description"] == "first"


def test_invalid_dataset_body_names_the_field(client: TestClient) -> None:
    bad_name = client.post("/v1/datasets", json={"name": "has space"})
    assert bad_name.status_code == 422
    assert bad_name.json()["errors"][0]["field"] == "name"
    unknown = client.post("/v1/datasets", json={"name": "ok", "colour": "red"})
    assert unknown.status_code == 422
    assert "colour" in unknown.json()["detail"]
    assert client.get("/v1/datasets").json()["count"] == 1


def test_default_dataset_cannot_be_deleted(client: TestClient) -> None:
    refused = client.delete("/v1/datasets/default")
    assert refused.status_code == 409
    assert client.get("/v1/datasets/default").status_code == 200


@pytest.mark.both_databases
def test_deleting_a_dataset_removes_its_tasks(client: TestClient) -> None:
    from tests.factories import seed

    client.post("/v1/datasets", json={"name": "tmp"})
    client.post("/v1/datasets/tmp/seeds", json=[seed(), seed()])
    task_id = client.get("/v1/datasets/tmp/tasks").json()["data"][0]["id"]
    client.delete("/v1/datasets/tmp")
    assert client.get(f"/v1/tasks/{task_id}").status_code == 404


def test_unknown_dataset_is_404_everywhere(client: TestClient) -> None:
    for method, path in [
        ("GET", "/v1/datasets/nope"),
        ("DELETE", "/v1/datasets/nope"),
        ("GET", "/v1/datasets/nope/tasks"),
        ("GET", "/v1/datasets/nope/export"),
        ("POST", "/v1/datasets/nope/seeds"),
    ]:
        response = client.request(method, path, json=[])
        assert response.status_code == 404, (method, path)
        assert response.json()["code"] == "not_found"
        assert "nope" in response.json()["detail"]
