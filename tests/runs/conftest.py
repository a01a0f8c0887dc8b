"""Runs against a scripted model endpoint, with the embedded worker polling fast."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import _wipe
from tests.runs.stub_llm import StubLLM

STUB_MODEL = "stub-model"


@pytest.fixture
def stub() -> Iterator[StubLLM]:
    server = StubLLM()
    server.start()
    yield server
    server.stop()


def stub_settings(
    settings_factory: Callable[..., Settings], stub: StubLLM, **overrides: Any
) -> Settings:
    endpoint = {
        "name": "stub",
        "base_url": stub.base_url,
        "models": [STUB_MODEL],
        "max_retries": 1,
        "timeout_s": 5,
    }
    return settings_factory(
        endpoints=[endpoint], worker_poll_seconds=0.05, worker_lease_seconds=5, **overrides
    )


@pytest.fixture
def api(settings_factory: Callable[..., Settings], stub: StubLLM) -> Iterator[TestClient]:
    settings = stub_settings(settings_factory, stub)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


def wait_for_run(client: TestClient, run_id: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] in {"succeeded", "failed", "cancelled"}:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish in {timeout_s}s: {run}")
