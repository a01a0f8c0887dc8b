"""A recipe's world: the scripted model server generating and judging, a dataset with seeds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import _wipe
from tests.factories import seed
from tests.judge.conftest import JUDGE_MODEL, JudgeStub, judge_settings
from tests.runs.conftest import STUB_MODEL

SMALL = {  # a recipe of one round whose children all run on the scripted server
    "name": "grow",
    "dataset": "pool",
    "steps": [
        {
            "name": "gen",
            "kind": "generate",
            "params": {"strategy": "self_instruct", "model": STUB_MODEL, "target": 3},
        },
        {"name": "rate", "kind": "judge", "params": {"model": JUDGE_MODEL}},
        {"name": "freeze", "kind": "version", "params": {"tag": "grown"}},
    ],
}


def make_pool(client: TestClient, name: str = "pool", seeds: int = 8) -> None:
    assert client.post("/v1/datasets", json={"name": name}).status_code == 201
    tasks = [seed() for _ in range(seeds)]
    assert client.post(f"/v1/datasets/{name}/seeds", json=tasks).status_code == 200


def wait_for_recipe(client: TestClient, recipe_id: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/recipes/{recipe_id}").json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"recipe {recipe_id} did not end: {body}")


@pytest.fixture
def recipe_stub() -> Iterator[JudgeStub]:
    server = JudgeStub()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def recipe_api(
    settings_factory: Callable[..., Settings], recipe_stub: JudgeStub
) -> Iterator[TestClient]:
    """The API and its embedded worker; fine-tunes on the CPU (no GPU on this service)."""
    settings = judge_settings(settings_factory, recipe_stub, finetune_device="cpu")
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        make_pool(client)
        yield client
    _wipe(settings.db_url)
