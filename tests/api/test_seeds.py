"""A user imports seed tasks: any valid form is stored, any invalid file is refused whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.factories import jsonl, seed

NDJSON = {"content-type": "application/x-ndjson"}


def _task_count(client: TestClient, dataset: str = "data") -> int:
    return len(client.get(f"/v1/datasets/{dataset}/tasks", params={"limit": 1000}).json()["data"])


@pytest.fixture
def data(client: TestClient) -> TestClient:
    assert client.post("/v1/datasets", json={"name": "data"}).status_code == 201
    return client


@pytest.mark.both_databases
def test_original_seed_file_imports_unchanged_and_exports_identically(
    data: TestClient, original_seeds_path: Path
) -> None:
    raw = original_seeds_path.read_bytes()
    result = data.post("/v1/datasets/data/seeds", content=raw, headers=NDJSON)
    assert result.status_code == 200, result.text
    assert result.json() == {"dataset": "data", "received": 175, "created": 175, "updated": 0}
    exported = data.get(
        "/v1/datasets/data/export", params={"format": "self_instruct", "include_seeds": True}
    )
    original = [json.loads(line) for line in raw.decode().splitlines()]
    assert [json.loads(line) for line in exported.text.splitlines()] == original


def test_json_array_jsonl_and_multipart_all_import(data: TestClient) -> None:
    as_array = data.post("/v1/datasets/data/seeds", json=[seed(), seed()])
    as_jsonl = data.post("/v1/datasets/data/seeds", content=jsonl([seed()]), headers=NDJSON)
    as_file = data.post(
        "/v1/datasets/data/seeds",
        files={"file": ("seeds.jsonl", jsonl([seed(), seed(), seed()]), "application/x-ndjson")},
    )
    assert [r.json()["created"] for r in (as_array, as_jsonl, as_file)] == [2, 1, 3]
    assert _task_count(data) == 6


@pytest.mark.both_databases
def test_reposting_a_seed_id_updates_it(data: TestClient) -> None:
    data.post("/v1/datasets/data/seeds", json=[seed(id="s1", instruction="Old wording here.")])
    again = data.post(
        "/v1/datasets/data/seeds",
        json=[seed(id="s1", instruction="New wording here, please."), seed(id="s2")],
    )
    assert again.json()["created"] == 1
    assert again.json()["updated"] == 1
    tasks = data.get("/v1/datasets/data/tasks").json()["data"]
    assert {t["seed_id"]: t["instruction"] for t in tasks}["s1"] == "New wording here, please."
    assert len(tasks) == 2


@pytest.mark.both_databases
def test_chinese_seeds_round_trip(data: TestClient) -> None:
    task = seed(
        instruction="把下面的句子翻译成英文。", instances=[{"input": "你好", "output": "Hello"}]
    )
    data.post("/v1/datasets/data/seeds", content=jsonl([task]), headers=NDJSON)
    stored = data.get("/v1/datasets/data/tasks").json()["data"][0]
    assert stored["instruction"] == "把下面的句子翻译成英文。"
    assert stored["instances"] == [{"input": "你好", "output": "Hello"}]


@pytest.mark.parametrize(
    ("bad_line", "field", "reason_part"),
    [
        ('{"id": "x", "instruction": ', None, "invalid JSON"),
        (
            json.dumps({k: v for k, v in seed().items() if k != "instruction"}),
            "instruction",
            "required",
        ),
        (json.dumps(seed(is_classification="yes")), "is_classification", "boolean"),
        (json.dumps(seed(instances=[{"input": 3, "output": "x"}])), "instances.0.input", "string"),
        (json.dumps(seed(instruction="   ")), "instruction", "empty"),
        ("[1, 2]", None, "JSON object"),
    ],
)
@pytest.mark.both_databases
def test_one_invalid_line_refuses_the_whole_import(
    data: TestClient, bad_line: str, field: str | None, reason_part: str
) -> None:
    body = jsonl([seed(), seed()]) + bad_line.encode() + b"\n" + jsonl([seed()])
    refused = data.post("/v1/datasets/data/seeds", content=body, headers=NDJSON)
    assert refused.status_code == 422
    problem = refused.json()
    assert problem["code"] == "invalid_input"
    assert "nothing was stored" in problem["detail"]
    assert problem["errors"][0]["line"] == 3
    assert problem["errors"][0]["field"] == field
    assert reason_part.lower() in problem["errors"][0]["reason"].lower()
    assert _task_count(data) == 0


def test_duplicate_id_within_a_file_names_both_lines(data: TestClient) -> None:
    refused = data.post("/v1/datasets/data/seeds", json=[seed(id="same"), seed(), seed(id="same")])
    assert refused.status_code == 422
    error = refused.json()["errors"][0]
    assert error["line"] == 3
    assert "first on line 1" in error["reason"]
    assert _task_count(data) == 0


def test_every_problem_is_listed(data: TestClient) -> None:
    body = jsonl([seed(instruction=""), seed(), seed(is_classification=None)])
    refused = data.post("/v1/datasets/data/seeds", content=body, headers=NDJSON)
    assert [e["line"] for e in refused.json()["errors"]] == [1, 3]


def test_more_tasks_than_allowed_is_413(settings_factory) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings_factory(seed_import_max_tasks=3))) as client:
        client.post("/v1/datasets", json={"name": "data"})
        refused = client.post("/v1/datasets/data/seeds", json=[seed() for _ in range(4)])
        assert refused.status_code == 413
        assert "SELFINSTRUCT_SEED_IMPORT_MAX_TASKS" in refused.json()["detail"]
        assert client.post("/v1/datasets/data/seeds", json=[seed() for _ in range(3)]).is_success
        client.delete("/v1/datasets/data")


def test_oversized_body_is_413_and_stores_nothing(settings_factory) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings_factory(max_body_bytes=2000))) as client:
        client.post("/v1/datasets", json={"name": "data"})
        big = jsonl([seed() for _ in range(30)])
        refused = client.post("/v1/datasets/data/seeds", content=big, headers=NDJSON)
        assert refused.status_code == 413
        assert refused.json()["code"] == "payload_too_large"

        def chunked():  # no Content-Length: the limit must hold while streaming too
            for start in range(0, len(big), 500):
                yield big[start : start + 500]

        streamed = client.post("/v1/datasets/data/seeds", content=chunked(), headers=NDJSON)
        assert streamed.status_code == 413
        assert _task_count(client) == 0
        client.delete("/v1/datasets/data")


def test_errors_are_json_without_stack_traces(data: TestClient) -> None:
    refused = data.post("/v1/datasets/data/seeds", content=b"\xff\xfe garbage", headers=NDJSON)
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/json")
    assert "Traceback" not in refused.text
    wrong_type = data.post(
        "/v1/datasets/data/seeds", content=b"{}", headers={"content-type": "image/png"}
    )
    assert wrong_type.status_code == 422
    assert "application/x-ndjson" in wrong_type.json()["detail"]
