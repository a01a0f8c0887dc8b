"""Waiting on evaluation jobs, for every test that queues one."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

FINAL = {"succeeded", "failed", "cancelled"}


def wait_for_evaluation(
    client: TestClient, evaluation_id: int, timeout_s: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    evaluation: dict[str, Any] = {}
    while time.monotonic() < deadline:
        evaluation = client.get(f"/v1/evaluations/{evaluation_id}").json()
        if evaluation["status"] in FINAL:
            return evaluation
        time.sleep(0.1)
    raise AssertionError(f"evaluation {evaluation_id} did not finish in {timeout_s}s: {evaluation}")


def all_samples(client: TestClient, evaluation_id: int, limit: int = 3) -> list[dict[str, Any]]:
    """Every sample, read page by page (small pages, so pagination is exercised)."""
    samples: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        page = client.get(f"/v1/evaluations/{evaluation_id}/samples", params=params).json()
        samples += page["data"]
        if not page["has_more"]:
            return samples
        after = page["next_cursor"]
