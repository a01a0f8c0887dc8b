"""Values that are valid JSON but that a database cannot take: numbers past 64 bits and NUL
characters. Each is a 4xx in the error shape with nothing written, on both databases (they were
500s: SQLite overflows on big integers, PostgreSQL refuses NUL in text)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.factories import seed

pytestmark = pytest.mark.both_databases

HUGE = 2**70


def test_numbers_past_64_bits_are_client_errors(client: TestClient) -> None:
    for path in (f"/v1/tasks/{HUGE}", f"/v1/runs/{HUGE}", f"/v1/tasks/{-HUGE}"):
        response = client.get(path)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["code"] in {"validation_error", "out_of_range"}
    listed = client.get("/v1/datasets/default/tasks", params={"run_id": HUGE})
    assert listed.status_code == 422
    evaluation = client.post(
        "/v1/evaluations",
        json={"models": ["SmolLM2-135M-Instruct"], "dataset": "default", "task_ids": [HUGE]},
    )
    assert evaluation.status_code == 422 and evaluation.json()["errors"][0]["field"]
    assert client.post(f"/v1/runs/{HUGE}/cancel").status_code == 422


def test_nul_characters_are_stored_whole_or_refused_whole(client: TestClient) -> None:
    """SQLite keeps a NUL; PostgreSQL cannot. Either way: no 5xx, and a refusal writes nothing."""
    before = client.get("/v1/datasets/default").json()
    created = client.post("/v1/datasets", json={"name": "nul", "description": "a\x00b"})
    assert created.status_code in (201, 422), created.text
    if created.status_code == 201:
        assert client.get("/v1/datasets/nul").json()["description"] == "a\x00b"
    else:
        assert created.json()["code"] == "out_of_range"
        assert client.get("/v1/datasets/nul").status_code == 404
    imported = client.post(
        "/v1/datasets/default/seeds",
        json=[seed(id="ok-1"), seed(id="nul-1", instruction="Say \x00 hello to the customer.")],
    )
    assert imported.status_code in (200, 422), imported.text
    after = client.get("/v1/datasets/default").json()
    assert after["seeds"] == before["seeds"] + (2 if imported.status_code == 200 else 0)
    search = client.get("/v1/datasets/default/tasks", params={"contains": "a\x00b"})
    assert search.status_code in (200, 422)
