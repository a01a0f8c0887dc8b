"""Limits: every size a client controls has a configured maximum, and going over it is a clear
4xx in the service's error shape with nothing half-written."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import _wipe
from tests.factories import seed


@pytest.fixture
def limited(settings_factory: Callable[..., Settings]) -> Iterator[TestClient]:
    """Small limits, so going over them is cheap; the worker is off so runs stay queued."""
    settings = settings_factory(
        max_body_bytes=64_000,
        seed_import_max_bytes=8_000,
        seed_import_max_tasks=5,
        max_run_target=50,
        max_active_runs_per_dataset=2,
        embedded_worker=False,
    )
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/datasets", json={"name": "pool"}).status_code == 201
        yield client
    _wipe(settings.db_url)


def _pool(client: TestClient) -> dict[str, Any]:
    return {
        "dataset": client.get("/v1/datasets/pool").json(),
        "tasks": client.get("/v1/datasets/pool/tasks").json()["data"],
        "runs": client.get("/v1/datasets/pool/runs").json()["data"],
    }


def _refused(response: Any, status: int, *names: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "code", "errors"}
    for name in names:
        assert name in body["detail"], (name, body)


def test_request_bodies_over_the_limit_are_refused_unread(limited: TestClient) -> None:
    """Declared (Content-Length) or streamed (chunked), a body over SELFINSTRUCT_MAX_BODY_BYTES
    is a 413 on any route, before the route reads it."""
    before = _pool(limited)
    big = json.dumps([seed(id=f"s{i}", instruction="x " * 400) for i in range(80)]).encode()
    assert len(big) > 64_000

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    for content in (big, chunked()):
        response = limited.post(
            "/v1/datasets/pool/seeds", content=content, headers={"content-type": "application/json"}
        )
        _refused(response, 413, "SELFINSTRUCT_MAX_BODY_BYTES")
        assert response.json()["code"] == "payload_too_large"
    for path in ("/v1/datasets", "/v1/files", "/v1/datasets/pool/runs", "/v1/chat/completions"):
        _refused(limited.post(path, content=big), 413, "SELFINSTRUCT_MAX_BODY_BYTES")
    assert _pool(limited) == before
    assert limited.get("/v1/datasets").json()["count"] == 2  # default and pool, nothing else


def test_seed_imports_over_the_byte_limit_store_nothing(limited: TestClient) -> None:
    """SELFINSTRUCT_SEED_IMPORT_MAX_BYTES applies to JSON, JSONL and file uploads alike, even
    when the body as a whole is allowed."""
    before = _pool(limited)
    tasks = [seed(id=f"s{i}", instruction="Describe " + "word " * 700) for i in range(3)]
    jsonl = "\n".join(json.dumps(t) for t in tasks).encode()
    assert 8_000 < len(jsonl) < 64_000
    attempts: list[dict[str, Any]] = [
        {"content": json.dumps(tasks).encode(), "headers": {"content-type": "application/json"}},
        {"content": jsonl, "headers": {"content-type": "application/x-ndjson"}},
        {"files": {"file": ("seeds.jsonl", jsonl)}},
    ]
    for kwargs in attempts:
        response = limited.post("/v1/datasets/pool/seeds", **kwargs)
        _refused(response, 413, "SELFINSTRUCT_SEED_IMPORT_MAX_BYTES", "Nothing was stored")
        assert response.json()["errors"][0]["field"] == "body"
    assert _pool(limited) == before
    # Under the limit, the same route works.
    ok = limited.post("/v1/datasets/pool/seeds", json=[seed(id="fits")])
    assert ok.status_code == 200 and ok.json()["created"] == 1


def test_seed_imports_over_the_task_limit_store_nothing(limited: TestClient) -> None:
    """SELFINSTRUCT_SEED_IMPORT_MAX_TASKS: one task over the limit refuses the whole import, in
    every format, even when the tasks are small."""
    before = _pool(limited)
    six = [seed(id=f"t{i}", instruction=f"Name a colour number {i}.") for i in range(6)]
    jsonl = "\n".join(json.dumps(t) for t in six).encode()
    attempts: list[dict[str, Any]] = [
        {"json": six},
        {"content": jsonl, "headers": {"content-type": "application/x-ndjson"}},
        {"files": {"file": ("seeds.jsonl", jsonl)}},
    ]
    for kwargs in attempts:
        response = limited.post("/v1/datasets/pool/seeds", **kwargs)
        _refused(response, 413, "SELFINSTRUCT_SEED_IMPORT_MAX_TASKS")
    assert _pool(limited) == before
    ok = limited.post("/v1/datasets/pool/seeds", json=six[:5])
    assert ok.status_code == 200 and ok.json()["created"] == 5


def test_run_targets_over_the_limit_are_refused(limited: TestClient) -> None:
    """SELFINSTRUCT_MAX_RUN_TARGET: a target above it is a 413 naming `target`; no run exists."""
    response = limited.post("/v1/datasets/pool/runs", json={"target": 51})
    _refused(response, 413, "SELFINSTRUCT_MAX_RUN_TARGET")
    assert response.json()["errors"][0]["field"] == "target"
    assert _pool(limited)["runs"] == []
    assert limited.post("/v1/datasets/pool/runs", json={"target": 50}).status_code == 201


@pytest.mark.both_databases
def test_active_runs_per_dataset_hold_under_concurrent_requests(limited: TestClient) -> None:
    """SELFINSTRUCT_MAX_ACTIVE_RUNS_PER_DATASET holds when many clients ask at the same moment:
    exactly the limit is created, the others get a 409 naming the setting; other datasets are
    not affected, and cancelling a run frees its place."""

    def create(_: int) -> Any:
        return limited.post("/v1/datasets/pool/runs", json={"target": 3})

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(create, range(8)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201, 201] + [409] * 6, [r.text for r in responses]
    for refused in (r for r in responses if r.status_code == 409):
        _refused(refused, 409, "SELFINSTRUCT_MAX_ACTIVE_RUNS_PER_DATASET")
    runs = _pool(limited)["runs"]
    assert len(runs) == 2 and {r["status"] for r in runs} == {"queued"}
    # The limit is per dataset.
    assert limited.post("/v1/datasets/default/runs", json={"target": 3}).status_code == 201
    # A cancelled run no longer counts.
    assert limited.post(f"/v1/runs/{runs[0]['id']}/cancel").status_code == 200
    assert limited.post("/v1/datasets/pool/runs", json={"target": 3}).status_code == 201
    _refused(limited.post("/v1/datasets/pool/runs", json={"target": 3}), 409)


def test_chats_on_the_in_process_model_beyond_the_queue_get_429_with_retry_after(
    settings_factory: Callable[..., Settings],
) -> None:
    """The bundled model answers one chat at a time: with room for one, a second chat sent
    while the first runs is told when to come back instead of holding its connection."""
    settings = settings_factory(local_queue_size=1, chat_max_n=2, embedded_worker=False)
    _wipe(settings.db_url)
    long_chat = {
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}],
        "max_tokens": 120,
        "temperature": 0,
    }
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        client.post("/v1/chat/completions", json={**long_chat, "max_tokens": 1})  # load it
        first = pool.submit(client.post, "/v1/chat/completions", json=long_chat)
        queue = client.app.state.local_queue  # type: ignore[attr-defined]
        while queue.active == 0 and not first.done():  # until the first one holds the slot
            time.sleep(0.005)
        refused = client.post("/v1/chat/completions", json={**long_chat, "max_tokens": 1})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert (
            refused.json()["code"] == "too_busy" and "LOCAL_QUEUE_SIZE" in refused.json()["detail"]
        )
        assert first.result().status_code == 200
        after = client.post("/v1/chat/completions", json={**long_chat, "max_tokens": 1})
        assert after.status_code == 200  # the slot is free again

        too_many = client.post("/v1/chat/completions", json={**long_chat, "n": 3})
        assert too_many.status_code == 422 and too_many.json()["errors"][0]["field"] == "n"
        too_long = client.post("/v1/chat/completions", json={**long_chat, "max_tokens": 5000})
        assert too_long.status_code == 422
        assert too_long.json()["errors"][0]["field"] == "max_tokens"
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        fields = schema["ChatCompletionRequest"]["properties"]
        assert fields["n"]["maximum"] == 2  # the schema states this server's ceilings
        assert {"type": "integer", "maximum": 4096}.items() <= fields["max_tokens"]["anyOf"][
            0
        ].items()
    _wipe(settings.db_url)
